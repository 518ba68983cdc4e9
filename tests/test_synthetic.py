"""generate_long_tail: IDW Appendix A generator, transitions pinned to eq. 12."""

import numpy as np
import pandas as pd
import pytest

from tfrec_proxy.data.synthetic import SyntheticData, generate_long_tail


def _role_transitions(data):
    """Empirical transition matrix between cluster roles.

    Each user's clusters are relabelled by role: its interests in ascending order, then
    its other clusters in ascending order, so every user shares one C x C matrix.
    """
    num_clusters = data.params["num_clusters"]
    num_users, seq_len = data.params["num_users"], data.params["seq_len"]
    clusters = data.cluster_of(data.interactions["item_id"].to_numpy()).reshape(
        num_users, seq_len)
    roles = np.empty((num_users, num_clusters), dtype=np.int64)
    for user, interests in enumerate(data.user_interests):
        others = np.setdiff1d(np.arange(num_clusters), interests)
        roles[user, np.concatenate([interests, others])] = np.arange(num_clusters)
    role = np.take_along_axis(roles, clusters, axis=1)
    counts = np.zeros((num_clusters, num_clusters))
    np.add.at(counts, (role[:, :-1].ravel(), role[:, 1:].ravel()), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def test_same_seed_same_data_and_other_seed_differs():
    first = generate_long_tail(num_users=50, seed=3)
    second = generate_long_tail(num_users=50, seed=3)
    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    np.testing.assert_array_equal(first.item_clusters, second.item_clusters)
    np.testing.assert_array_equal(np.stack(first.user_interests),
                                  np.stack(second.user_interests))
    other = generate_long_tail(num_users=50, seed=4)
    assert not first.interactions.equals(other.interactions)


def test_shapes_dtypes_and_columns():
    data = generate_long_tail(num_users=40, num_items=100, num_clusters=10, seq_len=7,
                              interests_per_user=2, seed=1)
    frame = data.interactions
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert all(dtype == np.int64 for dtype in frame.dtypes)
    assert len(frame) == 40 * 7
    assert frame["user_id"].value_counts().eq(7).all()
    np.testing.assert_array_equal(frame["user_id"].unique(), np.arange(1, 41))
    np.testing.assert_array_equal(frame["timestamp"].to_numpy(), np.tile(np.arange(7), 40))
    assert frame["item_id"].between(1, 100).all()
    assert data.item_clusters.shape == (100,) and data.item_clusters.dtype == np.int64
    assert len(data.user_interests) == 40
    for interests in data.user_interests:
        assert interests.dtype == np.int64 and len(np.unique(interests)) == 2
        assert np.all(np.diff(interests) > 0) and interests.max() < 10
    assert data.params["num_items"] == 100 and data.params["seed"] == 1


def test_first_click_is_in_an_interest_cluster():
    data = generate_long_tail(num_users=300, seed=2)
    first = data.interactions.groupby("user_id")["item_id"].first().to_numpy()
    first_cluster = data.cluster_of(first)
    assert all(c in interests for c, interests in zip(first_cluster, data.user_interests))


def test_remainder_items_go_to_first_clusters():
    data = generate_long_tail(num_users=5, num_items=10, num_clusters=3,
                              interests_per_user=1)
    np.testing.assert_array_equal(data.item_clusters, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(data.cluster_of([1, 4, 5, 10]), [0, 0, 1, 2])
    np.testing.assert_array_equal(data.cluster_of(np.array([[7, 8]])), [[1, 2]])
    for bad in (0, 11):
        with pytest.raises(ValueError, match=f"item id {bad} is out of range"):
            data.cluster_of([1, bad])


def test_interest_skew_concentrates_clicks_on_head_clusters():
    def head_share(skew):
        data = generate_long_tail(num_users=3000, interest_skew=skew, seed=5)
        clusters = data.cluster_of(data.interactions["item_id"].to_numpy())
        return np.bincount(clusters, minlength=20) / len(clusters)

    uniform, skewed = head_share(0.0), head_share(2.0)
    # Uniform: every cluster near 1/20; power law 2: cluster 0 in most users' Y_u.
    assert uniform.max() < 0.07
    assert skewed[0] > 0.2 and skewed[0] > 3 * uniform[0]
    assert skewed[0] > skewed[1] > skewed[5] > skewed[19]


def test_transitions_match_eq_12():
    data = generate_long_tail(num_users=20000, num_items=40, num_clusters=4, seq_len=30,
                              interests_per_user=2, alpha=0.6, gamma=0.3, epsilon=0.1,
                              seed=7)
    # Roles: interest a, interest b, non-interest a, non-interest b. From an interest:
    # stay alpha, other interest gamma / 1, each non-interest (1 - 0.6 - 0.3) / 2.
    # From a non-interest: stay epsilon, each interest (1 - 0.1) / 2, other 0.
    expected = np.array([[0.60, 0.30, 0.05, 0.05],
                         [0.30, 0.60, 0.05, 0.05],
                         [0.45, 0.45, 0.10, 0.00],
                         [0.45, 0.45, 0.00, 0.10]])
    np.testing.assert_allclose(_role_transitions(data), expected, atol=0.02)


def test_transition_edge_cases():
    # |Y_u| = 1: the gamma mass stays, so stay = 0.6 + 0.3; (1 - 0.9) / 2 to each other.
    single = generate_long_tail(num_users=5000, num_items=30, num_clusters=3,
                                interests_per_user=1, seed=8)
    np.testing.assert_allclose(_role_transitions(single),
                               [[0.90, 0.05, 0.05], [0.90, 0.10, 0.00], [0.90, 0.00, 0.10]],
                               atol=0.02)
    # |Y_u| = C: no non-interest cluster; stay 0.6, (1 - 0.6) / 2 to each other interest.
    every = generate_long_tail(num_users=5000, num_items=30, num_clusters=3,
                               interests_per_user=3, seed=9)
    np.testing.assert_allclose(_role_transitions(every),
                               [[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]],
                               atol=0.02)


def test_item_frequencies_follow_power_law_within_clusters():
    data = generate_long_tail(num_users=4000, num_items=20, num_clusters=4, item_skew=1.0,
                              seed=11)
    counts = np.bincount(data.interactions["item_id"], minlength=21)[1:].reshape(4, 5)
    # p_k ∝ 1 / (k + 1): [1, 1/2, 1/3, 1/4, 1/5] / (137 / 60).
    expected = np.array([60, 30, 20, 15, 12]) / 137
    assert np.all(np.diff(counts, axis=1) < 0)
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True),
                               np.tile(expected, (4, 1)), atol=0.01)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, r"alpha must be a probability in \[0, 1\], got 1.5"),
    ({"gamma": -0.1}, r"gamma must be a probability in \[0, 1\], got -0.1"),
    ({"epsilon": 2}, r"epsilon must be a probability in \[0, 1\], got 2"),
    ({"alpha": 0.8, "gamma": 0.3}, r"alpha \+ gamma must be <= 1.*alpha=0.8.*gamma=0.3"),
    ({"interests_per_user": 0}, "interests_per_user must be a positive integer, got 0"),
    ({"interests_per_user": 21}, r"interests_per_user must be in 1..num_clusters=20, got 21"),
    ({"num_items": 5}, "num_items must be >= num_clusters=20.*got 5"),
    ({"num_users": 0}, "num_users must be a positive integer, got 0"),
    ({"seq_len": -3}, "seq_len must be a positive integer, got -3"),
    ({"num_clusters": 2.5}, "num_clusters must be a positive integer, got 2.5"),
    ({"interest_skew": -1.0}, "interest_skew must be a finite number >= 0, got -1.0"),
    ({"item_skew": float("nan")}, "item_skew must be a finite number >= 0, got nan"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_long_tail(**{"num_users": 10, **kwargs})


# Item attributes: x_i = mu_c + attribute_noise * eps_i, from a separate generator.

_SMALL = {"num_users": 20, "num_items": 200, "num_clusters": 10, "seq_len": 5,
          "interests_per_user": 2, "seed": 13}


def _nearest_centroid_accuracy(data):
    """Share of items whose attributes are nearest their own cluster's mean attributes."""
    x = data.item_attributes.astype(np.float64)
    labels = data.item_clusters
    num_clusters = data.params["num_clusters"]
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(num_clusters)])
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return np.mean(distances.argmin(axis=1) == labels)


def test_attributes_default_off_and_do_not_perturb_clicks():
    default = generate_long_tail(**_SMALL)
    assert default.item_attributes is None
    assert default.params["attribute_dim"] == 0 and default.params["attribute_noise"] == 0.5
    explicit = generate_long_tail(**_SMALL, attribute_dim=0)
    assert explicit.item_attributes is None
    with_attributes = generate_long_tail(**_SMALL, attribute_dim=8, attribute_noise=2.0)
    assert with_attributes.params["attribute_dim"] == 8
    assert with_attributes.params["attribute_noise"] == 2.0
    for other in (explicit, with_attributes):
        pd.testing.assert_frame_equal(default.interactions, other.interactions)
        np.testing.assert_array_equal(default.item_clusters, other.item_clusters)
        np.testing.assert_array_equal(np.stack(default.user_interests),
                                      np.stack(other.user_interests))


def test_synthetic_data_without_attributes_still_constructs():
    data = generate_long_tail(**_SMALL)
    rebuilt = SyntheticData(interactions=data.interactions, item_clusters=data.item_clusters,
                            user_interests=data.user_interests, params=data.params)
    assert rebuilt.item_attributes is None


def test_attribute_shape_and_dtype():
    # 103 items over 10 clusters: uneven cluster sizes.
    data = generate_long_tail(**{**_SMALL, "num_items": 103}, attribute_dim=6)
    assert data.item_attributes.shape == (103, 6)
    assert data.item_attributes.dtype == np.float32
    assert np.all(np.isfinite(data.item_attributes))


def test_zero_noise_items_of_a_cluster_share_attributes():
    data = generate_long_tail(**{**_SMALL, "num_items": 103}, attribute_dim=4,
                              attribute_noise=0.0)
    x, labels = data.item_attributes, data.item_clusters
    prototypes = []
    for c in range(10):
        rows = x[labels == c]
        assert len(rows) >= 10
        np.testing.assert_array_equal(rows, np.broadcast_to(rows[0], rows.shape))
        prototypes.append(rows[0])
    prototypes = np.stack(prototypes)
    assert len(np.unique(prototypes, axis=0)) == 10


def test_noise_scales_the_deviation_from_the_prototype():
    # Same seed: same prototypes and eps, so x(noise) - x(0) = noise * eps.
    base = generate_long_tail(**_SMALL, attribute_dim=5, attribute_noise=0.0)
    unit = generate_long_tail(**_SMALL, attribute_dim=5, attribute_noise=1.0)
    half = generate_long_tail(**_SMALL, attribute_dim=5, attribute_noise=0.5)
    eps = unit.item_attributes.astype(np.float64) - base.item_attributes
    np.testing.assert_allclose(half.item_attributes - base.item_attributes.astype(np.float64),
                               0.5 * eps, atol=1e-5)
    # eps ~ N(0, 1): 200 * 5 draws.
    assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1.0) < 0.1


def test_nearest_centroid_recovers_clusters_at_low_noise_only():
    clean = generate_long_tail(**_SMALL, attribute_dim=16, attribute_noise=0.1)
    noisy = generate_long_tail(**_SMALL, attribute_dim=16, attribute_noise=10.0)
    assert _nearest_centroid_accuracy(clean) >= 0.99
    assert _nearest_centroid_accuracy(noisy) < 0.5


def test_attributes_are_deterministic_for_a_seed():
    first = generate_long_tail(**_SMALL, attribute_dim=8)
    second = generate_long_tail(**_SMALL, attribute_dim=8)
    np.testing.assert_array_equal(first.item_attributes, second.item_attributes)
    other = generate_long_tail(**{**_SMALL, "seed": 14}, attribute_dim=8)
    assert not np.array_equal(first.item_attributes, other.item_attributes)


@pytest.mark.parametrize("kwargs, message", [
    ({"attribute_dim": -1}, "attribute_dim must be an integer >= 0, got -1"),
    ({"attribute_dim": 2.5}, "attribute_dim must be an integer >= 0, got 2.5"),
    ({"attribute_dim": True}, "attribute_dim must be an integer >= 0, got True"),
    ({"attribute_noise": -0.1}, "attribute_noise must be a finite number >= 0, got -0.1"),
    ({"attribute_noise": float("nan")}, "attribute_noise must be a finite number >= 0, got nan"),
    ({"attribute_noise": float("inf")}, "attribute_noise must be a finite number >= 0, got inf"),
    ({"attribute_noise": "1"}, "attribute_noise must be a finite number >= 0, got '1'"),
])
def test_bad_attribute_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_long_tail(**{"num_users": 10, "attribute_dim": 4, **kwargs})


def test_to_sessions_cuts_each_user_in_order_and_interleaves_users():
    from tfrec_proxy.data import to_sessions
    from tfrec_proxy.data.sessions import split_sessions

    data = generate_long_tail(num_users=40, num_items=60, num_clusters=4, seq_len=25, seed=3)
    views = to_sessions(data, session_length=6, seed=1)
    assert list(views.columns) == ["session_id", "user_id", "item_id", "time"]
    # Every click once, in its user's order; sessions of >= 3 views, one user each.
    clicks = data.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    np.testing.assert_array_equal(views["item_id"], clicks["item_id"])
    np.testing.assert_array_equal(views["user_id"].astype(int), clicks["user_id"])
    sizes = views.groupby("session_id").size()
    assert sizes.min() >= 3 and 4 < sizes.mean() < 8
    assert (views.groupby("session_id")["user_id"].nunique() == 1).all()
    assert (views.groupby("session_id")["time"].apply(lambda t: t.is_monotonic_increasing)).all()
    # A user's sessions are later and later; users interleave, so a chronological
    # split puts known users into the test sessions.
    starts = views.groupby("session_id").agg(user=("user_id", "first"), start=("time", "min"))
    assert (starts.groupby("user")["start"].apply(lambda s: s.is_monotonic_increasing)).all()
    split = split_sessions(views, min_item_count=1)
    train_users = set(split.train.examples.user.tolist())
    test_users = set(split.test.examples.user.tolist())
    assert test_users and test_users <= train_users
    # Reproducible; another seed cuts differently.
    assert to_sessions(data, 6, seed=1).equals(views)
    assert not to_sessions(data, 6, seed=2)["session_id"].equals(views["session_id"])
    with pytest.raises(ValueError, match="session_length must be an integer >= 3"):
        to_sessions(data, 2)
