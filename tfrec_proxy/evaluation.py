"""Evaluation of a model or an exported run on a leave-one-out split.

IDW §4.2 protocol: HR@k/NDCG@k of the ground-truth item ranked against sampled items
the user never interacted with (99 by default), plus the same metrics over the full
catalogue (computed in candidate chunks; the user's other items kept, RAM §6.3, or
removed), each split into head (20% most frequent) and tail targets, into five
popularity groups of equal size (`pop1` most popular .. `pop5`) and into ten frequency
groups of equal interaction mass (PIR §4.3: `freq0` most frequent .. `freq9`).

This module does not import the serving code: an exported run is evaluated through
whatever object `evaluate_run` is given (a `tfrec_proxy.serving.Run`).
"""

import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.data.prepare import PreparedData
from tfrec_proxy.data.sequences import Examples
from tfrec_proxy.metrics import (Exclusions, evaluate_embeddings, frequency_groups,
                                 popularity_groups, sample_negatives, sampled_ranks, summarize)
from tfrec_proxy.run_format import PAD_ID

# What the full ranking does with the user's own items (TrainConfig.full_ranking_history).
FULL_RANKING_HISTORY = ("kept", "removed")


def exclusions(data: PreparedData, examples: Examples) -> Exclusions:
    """Each example's user's items (one set per user, shared by its rows)."""
    return Exclusions.from_user_sets(data.split.user_items, examples.user)


def evaluate_model(model: tf.keras.Model, data: PreparedData, split: str = "test",
                   ks: Sequence[int] = (5, 20), num_negatives: int = 99, seed: int = 0,
                   full: bool = True, chunk_size: int = 65536,
                   chunks: str = "all", history: str = "kept") -> Dict[str, float]:
    """Sampled and full-ranking metrics of an in-memory `RetrievalModel`.

    Args:
        model: The model.
        data: Prepared data.
        split: `"validation"` or `"test"`.
        ks: Cut-offs.
        num_negatives: Sampled negatives per example.
        seed: Negative-sampling seed.
        full: Also rank against the whole catalogue.
        chunk_size: Candidates per tile in the full ranking.
        chunks: `"all"` chunks' held-out items, or each user's `"last"` chunk only.
        history: `"kept"`: the full ranking ranks every item; `"removed"`: it skips
            each example's user's other items (`TrainConfig.full_ranking_history`).

    Returns:
        Flat dict, e.g. `{"sampled/hr@20": ..., "full/tail/ndcg@20": ...}`.
    """
    examples = data.examples(split, chunks=chunks)
    queries = model.query_embeddings(
        examples.history, context=query_context(model.query_tower.context_specs, examples))
    return _evaluate(data, examples, queries,
                     model.item_embeddings(data.vocab.size), model.scorer, ks=ks,
                     num_negatives=num_negatives, seed=seed, full=full, chunk_size=chunk_size,
                     history=history)


def overall_metrics(metrics: Dict[str, float], prefix: str) -> Dict[str, float]:
    """`metrics` without the popularity/frequency-group breakdowns, keys prefixed.

    For secondary evaluations (cold items, unseen targets, the history-removed
    ranking) whose per-group figures would only repeat the main split's groups.

    Example:

    >>> overall_metrics({"full/hr@5": 0.5, "full/pop1/hr@5": 0.9}, "cold/")
    {'cold/full/hr@5': 0.5}
    """
    return {f"{prefix}{key}": value for key, value in metrics.items()
            if "/pop" not in key and "/freq" not in key}


def unknown_raw_id(ids: np.ndarray) -> int:
    """A non-negative raw id that is not in `ids` (so a SavedModel maps it to OOV)."""
    candidates = np.arange(len(ids) + 1, dtype=np.int64)
    return int(np.setdiff1d(candidates, ids, assume_unique=False)[0])


def evaluate_run(run: Any, data: PreparedData, split: str = "test",
                 ks: Sequence[int] = (5, 20), num_negatives: int = 99, seed: int = 0,
                 full: bool = True, chunk_size: int = 65536,
                 chunks: str = "all", history: str = "kept") -> Dict[str, float]:
    """The same metrics computed through an exported run's SavedModels and candidates.

    Args:
        run: A loaded `tfrec_proxy.serving.Run`; its exported scorer is used.
        data: Prepared data; its items are looked up in the run's vocabulary (items
            unknown to the run are OOV in histories and score 0 as targets).
        split, ks, num_negatives, seed, full, chunk_size, chunks, history: As in
            `evaluate_model`.
    """
    examples = data.examples(split, chunks=chunks)
    _, unknown = run.vocab.lookup_with_unknown(data.vocab.ids)
    if unknown:
        warnings.warn(f"{unknown} of {len(data.vocab.ids)} items of the evaluation data are "
                      "not in the run's vocabulary; as history items they map to the OOV "
                      "bucket, as targets they score 0.", stacklevel=2)
    # Index histories back to raw ids for the SavedModel: padding -> -1, and the OOV
    # index -> an id the run does not know, so it stays OOV (not padding).
    raw_of_index = np.concatenate([[PAD_ID, unknown_raw_id(run.vocab.ids)], data.vocab.ids])
    raw = raw_of_index[examples.history]
    items = np.zeros((data.vocab.size, run.candidate_embeddings.shape[1]), np.float32)
    known = data.vocab.lookup(run.candidate_ids)
    items[known[known >= 2]] = run.candidate_embeddings[known >= 2]
    queries = run.embed_padded(raw, context=query_context(run.context_features, examples))
    return _evaluate(data, examples, queries, items, run.scorer, ks=ks,
                     num_negatives=num_negatives, seed=seed, full=full, chunk_size=chunk_size,
                     history=history)


def query_context(names: Any, examples: Examples) -> Dict[str, np.ndarray]:
    """The context features a query tower (or run) reads, from the examples: the raw
    user ids (`Examples.owner`) for `"user_id"` (a user embedding: RAM's u, ProxySR's
    eq. 10 bias)."""
    context = {}
    for name in names:
        if name != "user_id":
            raise ValueError(f"Cannot evaluate a query tower that reads {name!r}: the "
                             "evaluation examples hold histories and user ids only.")
        context[name] = examples.owner.astype(np.int64)
    return context


def _evaluate(data: PreparedData, examples: Examples, queries: np.ndarray, items: np.ndarray,
              scorer: Any, history: str = "kept", **options: Any) -> Dict[str, float]:
    """The shared tail of `evaluate_model`/`evaluate_run`: exclusions, item groups."""
    if history not in FULL_RANKING_HISTORY:
        raise ValueError(f"Unknown full-ranking history {history!r}; expected one of "
                         f"{FULL_RANKING_HISTORY}.")
    options["ks"] = tuple(options["ks"])
    return evaluate_embeddings(queries, items, examples.target, scorer=scorer,
                               exclude_seen_in_full=history == "removed",
                               head_items=data.head_items,
                               item_groups={**popularity_groups(data.item_counts),
                                            **frequency_groups(data.item_counts)},
                               exclude=exclusions(data, examples), **options)


class SampledRankingCallback(tf.keras.callbacks.Callback):
    """Adds sampled HR@k/NDCG@k on validation examples to the epoch logs.

    Keys are `val_hr@{k}` and `val_ndcg@{k}`, so `EarlyStopping` and TensorBoard can
    watch them. Negatives are drawn once, so epochs are compared on the same lists.
    Place it before `EarlyStopping` in the callback list.

    Args:
        data: Prepared data.
        split: Examples to evaluate (`"validation"`).
        ks: Cut-offs.
        num_negatives: Sampled negatives per example (IDW: 99; fewer for users with
            fewer eligible items).
        seed: Negative-sampling seed.
        chunks: `"all"` or `"last"` (each user's last chunk only).
    """

    def __init__(self, data: PreparedData, split: str = "validation",
                 ks: Sequence[int] = (5, 20), num_negatives: int = 99, seed: int = 0,
                 chunks: str = "all") -> None:
        super().__init__()
        self.examples = data.examples(split, chunks=chunks)
        self.vocab_size = data.vocab.size
        self.ks = tuple(ks)
        self.negatives = sample_negatives(self.vocab_size, self.examples.target,
                                          exclusions(data, self.examples),
                                          num_negatives=num_negatives, seed=seed,
                                          allow_fewer=True)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        if logs is None:
            return
        queries = self.model.query_embeddings(self.examples.history, context=query_context(
            self.model.query_tower.context_specs, self.examples))
        ranks = sampled_ranks(self.model.scorer, queries,
                              self.model.item_embeddings(self.vocab_size),
                              self.examples.target, self.negatives)
        results = summarize(ranks, ks=self.ks)
        for k in self.ks:
            logs[f"val_hr@{k}"] = results[f"hr@{k}"]
            logs[f"val_ndcg@{k}"] = results[f"ndcg@{k}"]
