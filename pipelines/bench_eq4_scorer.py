"""Benchmark: forms of the IDW eq. 4 multi-interest score over one training batch.

    python pipelines/bench_eq4_scorer.py [--queries 1605] [--interests 5] [--dim 16]

Times a forward and backward pass of a batch-softmax loss over `[N, N]` eq. 4 scores
(N queries of M interests against the N in-batch candidates), in one process, for:

* `dot M=1`: the plain `[N, d] x [d, N]` matmul (the SUR / baseline cost);
* `softmax over [N, M, C]`: autodiff of `softmax` over the interest axis of one
  `[N, M, C]` tensor (the textbook form);
* `unrolled autodiff`: one `[N, C]` matmul per interest, combined elementwise, autodiff;
* `library`: `MultiInterestScorer.score_matrix` (the unrolled form with its
  hand-written gradient, `tfrec_proxy.layers.parametric_attention.eq4_combine`).

Prints min and median milliseconds over `--repeats` and each form's ratio to
`dot M=1`. N = 1,605 is ML-1M's mean number of targets in a 64-sequence step.
"""

import argparse
import statistics
import time

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy._tf import tf
from tfrec_proxy.layers.parametric_attention import MultiInterestScorer


def _softmax_form(queries, candidates):
    scores = tf.einsum("bmd,cd->bmc", queries, candidates)
    return tf.reduce_sum(tf.nn.softmax(scores, axis=1) * scores, axis=1)


def _unrolled_autodiff(queries, candidates):
    parts = [tf.matmul(queries[:, m], candidates, transpose_b=True)
             for m in range(queries.shape[1])]
    top = parts[0]
    for part in parts[1:]:
        top = tf.maximum(top, part)
    exps = [tf.exp(part - top) for part in parts]
    return tf.add_n([e * part for e, part in zip(exps, parts)]) / tf.add_n(exps)


def _dot(queries, candidates):
    return tf.matmul(queries[:, 0], candidates, transpose_b=True)


def _time(form, queries, candidates, repeats: int, steps: int):
    q, c = tf.Variable(queries), tf.Variable(candidates)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            scores = form(q, c)
            loss = -tf.reduce_sum(tf.linalg.diag_part(tf.nn.log_softmax(scores, axis=-1)))
        return loss, tape.gradient(loss, [q, c])

    loss, _ = step()  # trace
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps * 1000)
    return float(loss), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1605)
    parser.add_argument("--interests", type=int, default=5)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="passes per repeat")
    args = parser.parse_args()
    tf.random.set_seed(0)
    queries = tf.random.normal([args.queries, args.interests, args.dim])
    candidates = tf.random.normal([args.queries, args.dim])
    scorer = MultiInterestScorer()
    forms = [("dot M=1", _dot, queries[:, :1]),
             ("softmax over [N, M, C]", _softmax_form, queries),
             ("unrolled autodiff", _unrolled_autodiff, queries),
             ("library (hand-written gradient)", scorer.score_matrix, queries)]
    print(f"N = {args.queries} queries x {args.queries} candidates, M = {args.interests}, "
          f"d = {args.dim}; forward + backward of the batch-softmax loss")
    baseline = None
    for name, form, inputs in forms:
        loss, times = _time(form, inputs, candidates, args.repeats, args.steps)
        median = statistics.median(times)
        baseline = baseline or median
        print(f"{name}: min {min(times):.1f} ms, median {median:.1f} ms "
              f"({median / baseline:.2f}x dot M=1); loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
