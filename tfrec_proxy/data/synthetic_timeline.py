"""A global clock for the synthetic clicks, with late users and late items.

`generate_long_tail` stamps each click with its position in its user's sequence, so
every user starts at time 0 and a chronological split (FELRec, Weimann & Conrad §3.1)
would see no new user. `interleave_timeline` puts all users on one clock in [0, 1)
instead (integer timestamps in `[0, TICKS)`):

* a regular user arrives at `a_u ~ U(0, 1 - span)` and clicks at
  `a_u + span * (j + v_j) / T` for its j-th of T clicks, `v_j ~ U(0, 1)`, so the
  users interleave and each user's own order is kept;
* a share `late_users` of the users (drawn uniformly) arrives at
  `a_u ~ U(0.8, 0.9)` and spreads its clicks over `[a_u, 1)` instead: they occur
  after any 80% cut of the interactions, so they are the new users of a split;
* a share `late_items` of the items (drawn uniformly, never a cluster's most
  popular item) is released at `r_i ~ U(0.8, 0.95)`: a click on a late item before
  its release is given to another item of the same cluster (drawn by the cluster's
  power law restricted to the items released by then), so late items have clicks
  only after their release: the new items of a split.

The clusters (ground truth) are unchanged. Draws come from `default_rng([seed, 3])`,
apart from the clicks' generator. numpy and pandas only.
"""

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from tfrec_proxy.data.synthetic import SyntheticData, _power_law

TICKS = 1_000_000_000  # timestamps are integer positions on a clock of this many ticks
TIMELINES = ("auto", "per-user", "interleaved")
LATE_START, LATE_ARRIVAL_END, LATE_RELEASE_END = 0.8, 0.9, 0.95


def resolve_timeline(timeline: str, split: str) -> str:
    """`"per-user"` or `"interleaved"`; `"auto"` is interleaved for a chronological split.

    Raises:
        ValueError: an unknown `timeline`.
    """
    if timeline not in TIMELINES:
        raise ValueError(f"Unknown synthetic timeline {timeline!r}; expected one of "
                         f"{TIMELINES}.")
    if timeline == "auto":
        return "interleaved" if split == "chronological" else "per-user"
    return timeline


def _check_share(name: str, value: Any, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                         np.floating)) \
            or not (math.isfinite(value) and 0.0 <= value < high):
        raise ValueError(f"{name} must be a number in [0, {high}), got {value!r}")
    return float(value)


def interleave_timeline(data: SyntheticData, activity_span: float = 0.5,
                        late_users: float = 0.0, late_items: float = 0.0,
                        seed: int = 0) -> SyntheticData:
    """The same users' clicks on one interleaved clock (see the module docstring).

    Args:
        data: `generate_long_tail` output (rows by user, then position).
        activity_span: Share of the clock a regular user's clicks span, in (0, 1).
        late_users: Share of the users arriving in the last fifth of the clock.
        late_items: Share of the items released in the last fifth of the clock.
        seed: Seed of the clock's draws.

    Returns:
        A `SyntheticData` whose `interactions` have int64 `timestamp`s in
        `[0, TICKS)`, increasing within each user, rows sorted by timestamp (ties by
        user), and whose clicks on late items before their release were moved to
        early items of the same cluster.

    Raises:
        ValueError: a share outside its range.

    Example:

        data = interleave_timeline(generate_long_tail(num_users=50, num_items=40),
                                   late_users=0.1, late_items=0.1)
        split = chronological_split(data.interactions)  # has new users and new items
    """
    span = _check_share("activity_span", activity_span)
    if span == 0.0:
        raise ValueError("activity_span must be > 0, got 0")
    late_users = _check_share("late_users", late_users)
    late_items = _check_share("late_items", late_items)
    rng = np.random.default_rng([seed, 3])
    frame = data.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    users = frame["user_id"].to_numpy()
    unique_users, starts, counts = np.unique(users, return_index=True, return_counts=True)
    num_users = len(unique_users)
    late = np.zeros(num_users, bool)
    late[rng.permutation(num_users)[:int(round(late_users * num_users))]] = True
    arrival = np.where(late, rng.uniform(LATE_START, LATE_ARRIVAL_END, num_users),
                       rng.uniform(0.0, 1.0 - span, num_users))
    width = np.where(late, 1.0 - arrival, span)
    user_row = np.repeat(np.arange(num_users), counts)
    position = np.arange(len(frame)) - np.repeat(starts, counts)
    length = np.repeat(counts, counts)
    clock = arrival[user_row] + width[user_row] * (position + rng.random(len(frame))) / length
    clock = np.minimum(clock, np.nextafter(1.0, 0.0))
    items = frame["item_id"].to_numpy(np.int64).copy()
    if late_items > 0:
        items = _release_late_items(rng, items, clock, data.item_clusters, late_items,
                                    data.params.get("item_skew", 0.5))
    timeline = pd.DataFrame({"user_id": users.astype(np.int64), "item_id": items,
                             "timestamp": (clock * TICKS).astype(np.int64)})
    timeline = timeline.sort_values(["timestamp", "user_id"], kind="stable")
    params = dict(data.params, timeline="interleaved", activity_span=span,
                  late_users=late_users, late_items=late_items, timeline_seed=seed)
    return dataclasses.replace(data, interactions=timeline.reset_index(drop=True),
                               params=params)


def _release_late_items(rng: np.random.Generator, items: np.ndarray, clock: np.ndarray,
                        item_clusters: np.ndarray, share: float,
                        item_skew: float) -> np.ndarray:
    """Moves clicks on late items before their release to released items of the cluster."""
    num_items = len(item_clusters)
    first_of_cluster = np.r_[True, item_clusters[1:] != item_clusters[:-1]]
    eligible = np.flatnonzero(~first_of_cluster)  # a cluster's top item is never late
    chosen = rng.permutation(eligible)[:int(round(share * num_items))]
    release = np.zeros(num_items)
    release[chosen] = rng.uniform(LATE_START, LATE_RELEASE_END, len(chosen))
    rank = np.arange(num_items) - np.flatnonzero(first_of_cluster)[item_clusters]
    weight = _power_law(num_items, item_skew)[rank]  # the generator's in-cluster law
    early = release[items - 1] > clock
    for row in np.flatnonzero(early):
        cluster = item_clusters[items[row] - 1]
        pool = np.flatnonzero((item_clusters == cluster) & (release <= clock[row]))
        p = weight[pool] / weight[pool].sum()
        items[row] = pool[rng.choice(len(pool), p=p)] + 1
    return items
