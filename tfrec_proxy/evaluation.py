"""Evaluation of a model or an exported run on a leave-one-out split.

IDW §4.2 protocol: HR@k/NDCG@k of the ground-truth item ranked against 99 sampled
items the user never interacted with, plus the same metrics over the full catalogue
(computed in candidate chunks), each split into head (20% most frequent) and tail
targets.
"""

import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.data.prepare import PreparedData
from tfrec_proxy.data.sequences import Examples
from tfrec_proxy.export import PAD_ID, Run
from tfrec_proxy.metrics import evaluate_embeddings, sample_negatives, sampled_ranks, summarize
from tfrec_proxy.scoring import get_scorer


def evaluate_model(model: tf.keras.Model, data: PreparedData, split: str = "test",
                   ks: Sequence[int] = (5, 20), num_negatives: int = 99, seed: int = 0,
                   full: bool = True, chunk_size: int = 65536) -> Dict[str, float]:
    """Sampled and full-ranking metrics of an in-memory `RetrievalModel`.

    Returns:
        Flat dict, e.g. `{"sampled/hr@20": ..., "full/tail/ndcg@20": ...}`.
    """
    examples = data.examples(split)
    return _evaluate(data, examples, model.query_embeddings(examples.history),
                     model.item_embeddings(data.vocab.size), model.scorer, ks=ks,
                     num_negatives=num_negatives, seed=seed, full=full, chunk_size=chunk_size)


def evaluate_run(run: Run, data: PreparedData, split: str = "test", ks: Sequence[int] = (5, 20),
                 num_negatives: int = 99, seed: int = 0, full: bool = True,
                 chunk_size: int = 65536) -> Dict[str, float]:
    """The same metrics computed through an exported run's SavedModel and candidates.

    Args:
        run: A loaded `tfrec_proxy.export.Run`.
        data: Prepared data; its items are looked up in the run's vocabulary.
    """
    examples = data.examples(split)
    _, unknown = run.vocab.lookup_with_unknown(data.vocab.ids)
    if unknown:
        warnings.warn(f"{unknown} of {len(data.vocab.ids)} items of the evaluation data are "
                      "not in the run's vocabulary; as history items they map to the OOV "
                      "bucket, as targets they score 0.", stacklevel=2)
    # Index histories back to raw ids (padding -> -1) for the SavedModel.
    raw = np.where(examples.history >= 2, data.vocab.ids[np.maximum(examples.history - 2, 0)],
                   PAD_ID)
    items = np.zeros((data.vocab.size, run.candidate_embeddings.shape[1]), np.float32)
    known = data.vocab.lookup(run.candidate_ids)
    items[known[known >= 2]] = run.candidate_embeddings[known >= 2]
    return _evaluate(data, examples, run.embed_padded(raw), items,
                     get_scorer(run.config.model.scorer), ks=ks, num_negatives=num_negatives,
                     seed=seed, full=full, chunk_size=chunk_size)


def _evaluate(data: PreparedData, examples: Examples, queries: np.ndarray, items: np.ndarray,
              scorer: tf.keras.layers.Layer, **options: Any) -> Dict[str, float]:
    """The shared tail of `evaluate_model`/`evaluate_run`: exclusions, head items."""
    options["ks"] = tuple(options["ks"])
    return evaluate_embeddings(queries, items, examples.target, scorer=scorer,
                               head_items=data.head_items, exclude=data.seen_items(examples),
                               **options)


class SampledRankingCallback(tf.keras.callbacks.Callback):
    """Adds sampled HR@k/NDCG@k on validation examples to the epoch logs.

    Keys are `val_hr@{k}` and `val_ndcg@{k}`, so `EarlyStopping` and TensorBoard can
    watch them. Negatives are drawn once, so epochs are compared on the same lists.
    Place it before `EarlyStopping` in the callback list.

    Args:
        data: Prepared data.
        split: Examples to evaluate (`"validation"`).
        ks: Cut-offs.
        num_negatives: Sampled negatives per example (IDW: 99).
        seed: Negative-sampling seed.
    """

    def __init__(self, data: PreparedData, split: str = "validation",
                 ks: Sequence[int] = (5, 20), num_negatives: int = 99, seed: int = 0) -> None:
        super().__init__()
        self.examples = data.examples(split)
        self.vocab_size = data.vocab.size
        self.ks = tuple(ks)
        self.negatives = sample_negatives(self.vocab_size, self.examples.target,
                                          data.seen_items(self.examples),
                                          num_negatives=num_negatives, seed=seed)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        if logs is None:
            return
        ranks = sampled_ranks(self.model.scorer, self.model.query_embeddings(self.examples.history),
                              self.model.item_embeddings(self.vocab_size),
                              self.examples.target, self.negatives)
        results = summarize(ranks, ks=self.ks)
        for k in self.ks:
            logs[f"val_hr@{k}"] = results[f"hr@{k}"]
            logs[f"val_ndcg@{k}"] = results[f"ndcg@{k}"]
