"""FELRec's model and training settings (`ModelConfig.felrec`), a `RunConfig` part."""

import dataclasses


@dataclasses.dataclass
class FELRecConfig:
    """FELRec (Weimann & Conrad, "Forget embedding layers"): sizes and training.

    Defaults are the paper's (§2.3, §2.5, §2.6): N = 3 encoder layers, d = 128,
    d_ff = 256, h = 4 heads, dropout 0.1, queue K = 8192, tau = 0.07, histories of
    the 64 most recent entities, SGD (momentum 0.9, base learning rate
    `TrainConfig.learning_rate`, 0.01 in the paper) with a cosine schedule after
    10 warm-up epochs, gradients clipped to [-1, 1] (reference code). The variant
    is `ModelConfig.loss`: `"infonce"` (FELRec-Q) or `"byol"` (FELRec-P). The paper
    trains 100 epochs with batches of 1024 (`TrainConfig.epochs`, `batch_size`).

    Attributes:
        dim: Model width d (also the cached representation size).
        num_layers: Transformer encoder layers N.
        num_heads: Attention heads h.
        ff_dim: Feed-forward width d_ff.
        dropout: P_drop.
        queue_size: FELRec-Q's queue length K.
        temperature: FELRec-Q's tau.
        history_len: L, the most recent items of a user (users of an item) encoded.
        share_heads: One projection (and prediction) MLP for users and items (the
            paper's -shareMLP ablation).
        normalization: `"batch"` (paper) or `"layer"` in the MLPs (-LN ablation).
        remove_queue_hits: FELRec-Q leaves the queue entries of a row's own user
            (item) out of its InfoNCE softmax (TFRS-style accidental-hit removal;
            `tfrec_proxy.felrec_losses`). The paper does not (False, the default);
            with a catalogue not much larger than the queue, the queue holds stale
            copies of the positive itself.
        padding_slot: Histories shorter than L also cover one zero-vector padding slot
            (the reference code's mask, default); False: only empty histories do.
        optimizer: `"sgd"` (paper, momentum 0.9) or `"adam"`.
        lr_schedule: `"cosine"` (per epoch: linear warm-up from 1e-7 for
            `warmup_epochs`, then cosine decay to 1e-7, as the reference code) or
            `"constant"`.
        warmup_epochs: Warm-up epochs of the cosine schedule (at most epochs - 1).
        eval_negatives: Sampled negatives per interaction for HR@k (paper: 100).
        hr_k: k of HR@k (paper: 10).
        eval_reset: Also evaluate the paper's "reset" mode (§4.4, FELRec-Q-reset):
            after training the cache is cleared and the trained encoder recomputes
            every representation from scratch over the training and validation
            interactions before the test interactions (metrics `reset/...`).
    """

    dim: int = 128
    num_layers: int = 3
    num_heads: int = 4
    ff_dim: int = 256
    dropout: float = 0.1
    queue_size: int = 8192
    temperature: float = 0.07
    history_len: int = 64
    share_heads: bool = False
    normalization: str = "batch"
    remove_queue_hits: bool = False
    padding_slot: bool = True
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    warmup_epochs: int = 10
    eval_negatives: int = 100
    hr_k: int = 10
    eval_reset: bool = False
