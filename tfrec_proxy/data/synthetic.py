"""Synthetic long-tail click sequences (IDW paper, Appendix A, eq. 12).

Every user gets a set of interest clusters `Y_u` drawn from a power law over the
clusters, walks a Markov chain over the clusters (eq. 12) and clicks one item of the
current cluster per step, drawn from a power law over that cluster's items. The ground
truth (the item -> cluster map and each user's `Y_u`) is returned with the clicks, so
that learned item representations can be checked against it.

Optionally (`attribute_dim > 0`) every item also gets a dense attribute vector that is a
noisy function of its cluster: cluster c has a prototype `mu_c ~ N(0, I)` and item i of
cluster c gets `x_i = mu_c + attribute_noise * eps_i`, `eps_i ~ N(0, I)`. Attribute-based
item towers can then be tested on tail and unseen items, whose ids carry little or no
click signal but whose attributes still reveal the cluster. The attributes come from a
separate random generator drawn after everything else, so the clicks for a seed do not
depend on `attribute_dim` or `attribute_noise`.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import numpy.typing as npt
import pandas as pd

from tfrec_proxy._checks import check_positive_int


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """A generated data set and its ground truth.

    Attributes:
        interactions: one row per click, columns `user_id`, `item_id`, `timestamp`
            (all int64). Users are 1..num_users, items 1..num_items, and `timestamp` is
            the click's position 0..seq_len-1 in its user's sequence. Rows are sorted by
            user, then timestamp.
        item_clusters: int64 `[num_items]`; `item_clusters[i - 1]` is the cluster
            (0..num_clusters-1) of item id `i`.
        user_interests: one int64 array per user (user id `u` at position `u - 1`): the
            user's interest clusters `Y_u`, sorted ascending.
        params: the arguments of `generate_long_tail` that produced the data.
        item_attributes: float32 `[num_items, attribute_dim]`; row `i - 1` holds the
            attributes of item id `i` (its cluster's prototype plus Gaussian noise, see
            `generate_long_tail`). None when generated with `attribute_dim=0`.
    """

    interactions: pd.DataFrame
    item_clusters: np.ndarray
    user_interests: List[np.ndarray]
    params: Dict[str, Any]
    item_attributes: Optional[np.ndarray] = None

    def cluster_of(self, item_ids: npt.ArrayLike) -> np.ndarray:
        """Looks up the ground-truth cluster of item ids.

        Args:
            item_ids: integer item ids in 1..num_items, any shape.

        Returns:
            int64 array of the same shape with each item's cluster.

        Raises:
            ValueError: if an id is not an integer or is outside 1..num_items.
        """
        ids = np.asarray(item_ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise ValueError(f"item_ids must be integers, got dtype {ids.dtype}")
        bad = (ids < 1) | (ids > len(self.item_clusters))
        if np.any(bad):
            raise ValueError(
                f"item id {ids[bad].flat[0]} is out of range: expected ids in "
                f"1..{len(self.item_clusters)}")
        return self.item_clusters[ids.astype(np.int64) - 1]


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _check_non_negative_finite(name: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not (math.isfinite(value) and value >= 0)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _item_attributes(seed: Optional[int], item_clusters: np.ndarray, num_clusters: int,
                     attribute_dim: int, attribute_noise: float) -> np.ndarray:
    """Cluster prototype plus Gaussian noise per item, float32 `[num_items, attribute_dim]`.

    Draws from its own generator `default_rng([seed, 1])` (fresh entropy if `seed` is
    None, like the clicks), prototypes first, then the noise.
    """
    rng = np.random.default_rng(None if seed is None else [seed, 1])
    prototypes = rng.standard_normal((num_clusters, attribute_dim))
    noise = rng.standard_normal((len(item_clusters), attribute_dim))
    return (prototypes[item_clusters] + attribute_noise * noise).astype(np.float32)


def _power_law(n: int, exponent: float) -> np.ndarray:
    """Normalised weights `(k + 1) ** -exponent` for k = 0..n-1, float64 `[n]`."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _sample_interests(rng: np.random.Generator, num_users: int, weights: np.ndarray,
                      k: int) -> np.ndarray:
    """Draws k distinct clusters per user with probabilities `weights`, no replacement.

    Uses the Gumbel-top-k trick, which has the same distribution as k successive
    weighted draws without replacement.

    Returns:
        int64 `[num_users, k]`, each row sorted ascending.
    """
    keys = np.log(weights)[None, :] + rng.gumbel(size=(num_users, len(weights)))
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return np.sort(top, axis=1).astype(np.int64)


def _walk(rng: np.random.Generator, num_users: int, num_clusters: int, k: int,
          seq_len: int, alpha: float, gamma: float, epsilon: float) -> np.ndarray:
    """Runs the eq. 12 Markov chain for every user at once.

    The state is a slot `s` in the user's cluster order (its k interests first, then its
    C - k other clusters): `s < k` is an interest cluster.

    Returns:
        int64 `[num_users, seq_len]` slots.
    """
    others = num_clusters - k
    # Thresholds on a uniform draw from an interest cluster: below `stay` stay, below
    # `switch` move to another interest, else to a non-interest cluster. Edge cases of
    # eq. 12: no other interest -> the gamma mass stays; no non-interest cluster -> its
    # mass joins gamma (an infinite threshold, so rounding never picks a missing slot).
    if k == 1:
        stay = alpha + gamma if others else 1.0
        switch = stay
    else:
        stay = alpha
        switch = alpha + gamma if others else np.inf
    slots = np.empty((num_users, seq_len), dtype=np.int64)
    slot = (rng.random(num_users) * k).astype(np.int64)
    slots[:, 0] = slot
    for t in range(1, seq_len):
        move = rng.random(num_users)
        pick = rng.random(num_users)
        in_interest = slot < k
        # Another interest, uniformly: skip over the current slot.
        other_interest = (pick * max(k - 1, 1)).astype(np.int64)
        other_interest += other_interest >= slot
        non_interest = k + (pick * max(others, 1)).astype(np.int64)
        any_interest = (pick * k).astype(np.int64)
        from_interest = np.where(
            move < stay, slot, np.where(move < switch, other_interest, non_interest))
        from_other = np.where(move < epsilon, slot, any_interest)
        slot = np.where(in_interest, from_interest, from_other)
        slots[:, t] = slot
    return slots


def generate_long_tail(num_users: int = 2000, num_items: int = 1000, num_clusters: int = 20,
                       seq_len: int = 30, interest_skew: float = 1.0, item_skew: float = 0.5,
                       interests_per_user: int = 3, alpha: float = 0.6, gamma: float = 0.3,
                       epsilon: float = 0.1, seed: int = 0, attribute_dim: int = 0,
                       attribute_noise: float = 0.5) -> SyntheticData:
    """Generates click sequences with skewed interests and items (IDW Appendix A).

    1. Clusters: `num_items // num_clusters` items per cluster; the
       `num_items % num_clusters` remaining items go one each to the first clusters.
       Each cluster's item ids are contiguous (cluster 0 holds ids 1..K or 1..K+1).
    2. Interests: each user draws `interests_per_user` distinct clusters `Y_u` without
       replacement with weights `pi_c ∝ (c + 1) ** -interest_skew` (0 = uniform).
    3. Cluster walk (eq. 12): the first cluster is uniform over `Y_u`. From an interest
       cluster: stay with `alpha`, move to each other interest with
       `gamma / (|Y_u| - 1)`, to each non-interest cluster with
       `(1 - alpha - gamma) / (C - |Y_u|)`. From a non-interest cluster: stay with
       `epsilon`, move to each interest with `(1 - epsilon) / |Y_u|`, never to another
       non-interest cluster. Edge cases: with `|Y_u| = 1` the `gamma` mass stays
       (stay probability `alpha + gamma`); with `|Y_u| = C` the `1 - alpha - gamma` mass
       is spread over the other interests like `gamma` (each gets
       `(1 - alpha) / (C - 1)`), so `alpha` stays the probability of staying; with
       `C = 1` the walk never moves.
    4. Items: each step clicks an item of the current cluster, the cluster's k-th item
       (k = 0, 1, ...) with probability `∝ (k + 1) ** -item_skew`.
    5. Attributes (only if `attribute_dim > 0`): each cluster c gets a prototype
       `mu_c ~ N(0, I_attribute_dim)`; item i of cluster c gets
       `x_i = mu_c + attribute_noise * eps_i` with `eps_i ~ N(0, I_attribute_dim)`,
       stored as float32. With `attribute_noise = 0` the items of a cluster share their
       attributes exactly; as the noise grows the cluster signal fades (per dimension the
       signal-to-noise ratio of prototype to noise standard deviation is
       `1 / attribute_noise`). These draws come from a separate generator,
       `np.random.default_rng([seed, 1])`, so steps 1-4 (the clicks) are the same for
       every `attribute_dim` and `attribute_noise`.

    Args:
        num_users: number of users (ids 1..num_users).
        num_items: number of items (ids 1..num_items), at least `num_clusters`.
        num_clusters: number of clusters C.
        seq_len: clicks per user T.
        interest_skew: power-law exponent of the cluster weights, >= 0.
        item_skew: power-law exponent of the within-cluster item weights, >= 0.
        interests_per_user: |Y_u|, in 1..num_clusters.
        alpha: probability of staying in an interest cluster.
        gamma: total probability of switching to another interest cluster.
        epsilon: probability of staying in a non-interest cluster.
        seed: seed of `np.random.default_rng`; the output is a function of the
            arguments.
        attribute_dim: length of each item's attribute vector, >= 0; 0 (the default)
            generates no attributes (`SyntheticData.item_attributes` is None).
        attribute_noise: standard deviation of the per-item noise added to the cluster
            prototype, finite and >= 0. Ignored when `attribute_dim` is 0.

    Returns:
        The clicks and their ground truth, see `SyntheticData`.

    Raises:
        ValueError: an argument is out of range (the message names it and its value).
    """
    params = dict(num_users=num_users, num_items=num_items, num_clusters=num_clusters,
                  seq_len=seq_len, interest_skew=interest_skew, item_skew=item_skew,
                  interests_per_user=interests_per_user, alpha=alpha, gamma=gamma,
                  epsilon=epsilon, seed=seed, attribute_dim=attribute_dim,
                  attribute_noise=attribute_noise)
    for name in ("num_users", "num_items", "num_clusters", "seq_len", "interests_per_user"):
        check_positive_int(name, params[name])
    for name in ("interest_skew", "item_skew"):
        if not (math.isfinite(params[name]) and params[name] >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {params[name]!r}")
    for name in ("alpha", "gamma", "epsilon"):
        _check_unit(name, params[name])
    _check_non_negative_int("attribute_dim", attribute_dim)
    _check_non_negative_finite("attribute_noise", attribute_noise)
    if alpha + gamma > 1.0:
        raise ValueError(f"alpha + gamma must be <= 1, got alpha={alpha!r} + "
                         f"gamma={gamma!r} = {alpha + gamma!r}")
    if interests_per_user > num_clusters:
        raise ValueError(f"interests_per_user must be in 1..num_clusters={num_clusters}, "
                         f"got {interests_per_user!r}")
    if num_items < num_clusters:
        raise ValueError(f"num_items must be >= num_clusters={num_clusters} (every cluster "
                         f"needs an item), got {num_items!r}")

    rng = np.random.default_rng(seed)
    interests = _sample_interests(rng, num_users, _power_law(num_clusters, interest_skew),
                                  interests_per_user)
    # Cluster order per user: interests first, then the other clusters.
    is_interest = np.zeros((num_users, num_clusters), dtype=bool)
    np.put_along_axis(is_interest, interests, True, axis=1)
    order = np.argsort(~is_interest, axis=1, kind="stable")
    order[:, :interests_per_user] = interests
    slots = _walk(rng, num_users, num_clusters, interests_per_user, seq_len,
                  alpha, gamma, epsilon)
    clusters = np.take_along_axis(order, slots, axis=1).ravel()

    sizes = np.full(num_clusters, num_items // num_clusters, dtype=np.int64)
    sizes[:num_items % num_clusters] += 1
    item_clusters = np.repeat(np.arange(num_clusters, dtype=np.int64), sizes)
    # Cluster c's CDF shifted by c, so one sorted array serves every cluster:
    # searching c + u (u uniform in [0, 1)) lands inside cluster c's block.
    shifted_cdf = np.concatenate([
        c + np.append(np.cumsum(_power_law(size, item_skew))[:-1], 1.0)
        for c, size in enumerate(sizes)])
    items = np.searchsorted(shifted_cdf, clusters + rng.random(clusters.size),
                            side="right") + 1

    interactions = pd.DataFrame({
        "user_id": np.repeat(np.arange(1, num_users + 1, dtype=np.int64), seq_len),
        "item_id": items.astype(np.int64),
        "timestamp": np.tile(np.arange(seq_len, dtype=np.int64), num_users),
    })
    item_attributes = None
    if attribute_dim > 0:
        item_attributes = _item_attributes(seed, item_clusters, num_clusters,
                                           int(attribute_dim), float(attribute_noise))
    return SyntheticData(interactions=interactions, item_clusters=item_clusters,
                         user_interests=list(interests), params=params,
                         item_attributes=item_attributes)


_SESSION_GAP_MS = 86_400_000  # one day between a user's sessions (synthetic clock)
_VIEW_GAP_MS = 60_000  # one minute between the views of a session


def to_sessions(data: SyntheticData, session_length: int = 8, seed: int = 0) -> pd.DataFrame:
    """Session mode: each user's click sequence cut into consecutive sessions.

    The cluster walk runs on across a user's sessions, so its interests `Y_u` are the
    hidden state that links them (what ProxySR's proxies imitate, and what its eq. 10
    user bias can learn for known users). Session lengths are `3 + Poisson(
    session_length - 3)`, cut in order from the user's sequence; a remainder shorter
    than 3 joins the user's last session. Clock: user u's k-th session starts at
    `(k + o_u)` days, `o_u ~ U(0, 1)`, its views a minute apart, so the sessions of
    all users interleave in time and a chronological split puts each user's later
    sessions in validation and test (known users there).

    Args:
        data: Generated clicks (`generate_long_tail`).
        session_length: Mean views per session, >= 3.
        seed: Seed of the session cuts and start offsets (`default_rng([seed, 2])`,
            apart from the clicks' generator).

    Returns:
        Views in the `load_sessions` format: `session_id` int64 (1.., in user then
        session order), `user_id` nullable Int64 (every view known), `item_id` int64
        and `time` int64 milliseconds, sorted by session then time.

    Raises:
        ValueError: `session_length < 3`, or a user has fewer than 3 clicks.

    Example:
        views = to_sessions(generate_long_tail(num_users=50, num_items=40), 6)
        split = split_sessions(views)  # tfrec_proxy.data.sessions
    """
    if isinstance(session_length, bool) or not isinstance(session_length, (int, np.integer)) \
            or session_length < 3:
        raise ValueError(f"session_length must be an integer >= 3, got {session_length!r}")
    frame = data.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    users, starts, counts = np.unique(frame["user_id"].to_numpy(), return_index=True,
                                      return_counts=True)
    if counts.min() < 3:
        raise ValueError(f"user {users[np.argmin(counts)]} has {counts.min()} click(s); "
                         "sessions need at least 3")
    rng = np.random.default_rng([seed, 2])
    offsets = rng.random(len(users))
    session_of = np.empty(len(frame), np.int64)
    position = np.empty(len(frame), np.int64)  # view index within its session
    start_ms = np.empty(len(frame), np.int64)
    next_id = 1
    for user, (start, count) in enumerate(zip(starts, counts)):
        lengths: List[int] = []
        left = int(count)
        while left > 0:
            length = min(3 + int(rng.poisson(session_length - 3)), left)
            if length < 3:
                lengths[-1] += length
            else:
                lengths.append(length)
            left -= length
        for k, length in enumerate(lengths):
            rows = slice(start + sum(lengths[:k]), start + sum(lengths[:k]) + length)
            session_of[rows] = next_id
            position[rows] = np.arange(length)
            start_ms[rows] = int((k + offsets[user]) * _SESSION_GAP_MS)
            next_id += 1
    return pd.DataFrame({
        "session_id": session_of,
        "user_id": pd.array(frame["user_id"].to_numpy(), dtype="Int64"),
        "item_id": frame["item_id"].to_numpy(np.int64),
        "time": start_ms + position * _VIEW_GAP_MS})
