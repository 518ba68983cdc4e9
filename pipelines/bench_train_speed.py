"""Benchmark: training throughput of the baseline against a plain TFRS two-tower model.

Both models train in this process on the same data at equal dims (d = 64, 1,024
training targets per step, histories of 50):

* plain TFRS: `tf.keras` GRU over the history as the query tower, an id embedding as
  the candidate tower, `tfrs.tasks.Retrieval` with `candidate_sampling_probability`
  (in-batch softmax with logQ), one example per prefix;
* tfrec_proxy's baseline through `tfrec_proxy.training.train`: causal self-attention
  (2 layers x 4 heads) encoded once per sequence, loss at every position, the same logQ
  softmax; at d = 64 with Adam 0.003, no dropout and an id embedding + one linear layer
  as item tower (`--learning-rate`, `--dropout`, `--item-mlp` change them; the library
  defaults are the IDW paper's d = 16 settings).

Throughput is counted per training target (examples/s); epochs after the first are
timed (the first includes tracing). Both are then evaluated with the same protocol
(`tfrec_proxy.metrics.evaluate_embeddings`, 99 sampled negatives and full ranking on
the test split). The last line printed is `speed ratio vs plain TFRS: X` (median over
timed epochs of ours / median of plain TFRS's).

Usage:
    python pipelines/bench_train_speed.py --quick                 # synthetic, ~1 min
    python pipelines/bench_train_speed.py --data-path ../shared/data/ml-1m/ml-1m.txt
"""

import argparse
import statistics
import time
from typing import Dict, List

import numpy as np

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy._tf import tf, tfrs
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data import make_dataset, prepare_data
from tfrec_proxy.evaluation import exclusions
from tfrec_proxy.metrics import evaluate_embeddings
from tfrec_proxy.training import train


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of each epoch's training steps: epoch start to its last batch's end
    (validation and end-of-epoch callbacks excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: List[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self._last - self._start)


class PlainTfrsModel(tfrs.Model):
    """The TFRS tutorial model: GRU query tower, id-embedding candidate tower."""

    def __init__(self, vocab_size: int, dim: int, probability: np.ndarray) -> None:
        super().__init__()
        self.query_model = tf.keras.Sequential([
            tf.keras.layers.Embedding(vocab_size, dim, mask_zero=True),
            tf.keras.layers.GRU(dim)])
        self.candidate_model = tf.keras.layers.Embedding(vocab_size, dim)
        self.probability = tf.constant(probability, tf.float32)
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        queries = self.query_model(features["history"], training=training)
        candidates = self.candidate_model(features["target"])
        return self.task(queries, candidates,
                         candidate_sampling_probability=tf.gather(self.probability,
                                                                  features["target"]),
                         candidate_ids=features["target"], compute_metrics=False,
                         compute_batch_metrics=False)


def _evaluate(queries, items, data, ks=(5, 20)) -> Dict[str, float]:
    examples = data.split.test
    return evaluate_embeddings(queries, items, examples.target, ks=ks,
                               head_items=data.head_items, exclude=exclusions(data, examples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small synthetic data, 8 epochs (about a minute)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    parser.add_argument("--data-path", help="interaction file (default: synthetic data)")
    parser.add_argument("--epochs", type=int, default=None, help="default 8 (--quick) or 5")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024, help="targets per step")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--ours-epochs", type=int, default=None,
                        help="epochs of tfrec_proxy's model (default: --epochs); e.g. the "
                             "number that takes plain TFRS's training time")
    parser.add_argument("--learning-rate", type=float, default=0.003,
                        help="Adam learning rate of tfrec_proxy's model (plain TFRS: 0.01)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout of tfrec_proxy's query tower")
    parser.add_argument("--item-mlp", action="store_true",
                        help="tfrec_proxy's item tower as a 2-layer MLP (d, d) instead of "
                             "an id embedding + one linear layer (d,)")
    args = parser.parse_args()

    config = RunConfig()
    config.data.max_len = args.max_len
    if args.data_path:
        config.data.source, config.data.path = "file", args.data_path
    else:
        synthetic = config.data.synthetic
        synthetic.num_users, synthetic.num_items, synthetic.seq_len = (
            (60, 100, 20) if args.tiny else (600, 1000, 50) if args.quick else (4000, 3000, 100))
    epochs = args.epochs or (2 if args.tiny else 8 if args.quick else 5)
    if args.tiny:
        args.dim, args.batch_size, args.max_len = 8, 64, 20
        config.data.max_len = args.max_len
    config.model.embedding_dim = args.dim
    config.model.item_hidden_units = (args.dim, args.dim) if args.item_mlp else (args.dim,)
    config.model.dropout = args.dropout
    config.train.batch_size = args.batch_size
    config.train.learning_rate = args.learning_rate
    # Exactly --batch-size targets per step for both models (equal batches), however
    # few sequences that is.
    config.train.min_sequences_per_batch = 1
    config.train.epochs = args.ours_epochs or epochs
    config.train.early_stopping_patience = 0

    data = prepare_data(config.data)
    targets = len(data.split.train)
    print(f"data: {data.summary()}; {targets} training targets per epoch; d={args.dim}, "
          f"{args.batch_size} targets/step, history {args.max_len}; plain TFRS {epochs} "
          f"epochs, tfrec_proxy {config.train.epochs} epochs")

    tf.keras.utils.set_random_seed(0)
    plain = PlainTfrsModel(data.vocab.size, args.dim, data.sampling_probability)
    plain.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    plain_timer = EpochTimer()
    plain.fit(make_dataset(data.split.train, args.batch_size, shuffle=True), epochs=epochs,
              callbacks=[plain_timer], verbose=0)
    plain_rates = [targets / s for s in plain_timer.seconds[1:]]
    history = data.split.test.history
    plain_metrics = _evaluate(plain.query_model.predict(history, batch_size=4096, verbose=0),
                              plain.candidate_model(tf.range(data.vocab.size)).numpy(), data)

    ours_timer = EpochTimer()
    result = train(config, export=False, verbose=0, data=data, callbacks=[ours_timer])
    ours_rates = [targets / s for s in ours_timer.seconds[1:]]
    ours_metrics = _evaluate(result.model.query_embeddings(history),
                             result.model.item_embeddings(data.vocab.size), data)

    for name, rates, metrics in (("plain TFRS (GRU, per prefix)", plain_rates, plain_metrics),
                                 ("tfrec_proxy baseline", ours_rates, ours_metrics)):
        print(f"{name}: {len(rates) + 1} epochs, examples/s min {min(rates):,.0f} / median "
              f"{statistics.median(rates):,.0f}; test sampled HR@20 "
              f"{metrics['sampled/hr@20']:.4f} NDCG@20 {metrics['sampled/ndcg@20']:.4f}; "
              f"full HR@20 {metrics['full/hr@20']:.4f} NDCG@20 {metrics['full/ndcg@20']:.4f}; "
              f"full tail NDCG@20 {metrics['full/tail/ndcg@20']:.4f}")
    ratio = statistics.median(ours_rates) / statistics.median(plain_rates)
    print(f"speed ratio vs plain TFRS: {ratio:.2f}")


if __name__ == "__main__":
    main()
