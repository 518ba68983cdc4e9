"""ProxySR maths (Cho et al., §3): the hyperplane projection (eq. 6), the distance
(eq. 7) on packed queries, the margin loss (eq. 8), the regularisers (eq. 9), the
unit-ball constraint on embeddings, and the temperature annealing of the proxy
selection (§4.1.4). The layers and the scorer are in `tfrec_proxy.layers.proxysr`.
"""

from typing import Any, Dict, Tuple, Union

from tfrec_proxy._tf import tf

_EPS = 1e-12
_MASKED = -1e9


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class UnitBallConstraint(tf.keras.constraints.Constraint):
    """Keeps every row in the unit ball: rows with `||w|| > 1` are scaled to norm 1.

    Args:
        axis: Axis of a row's coordinates (-1: the rows of an `[N, d]` table).

    Example:

        table = tf.keras.layers.Embedding(100, 16, embeddings_constraint=UnitBallConstraint())
    """

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        norms = tf.norm(w, axis=self.axis, keepdims=True)
        return w / tf.maximum(norms, tf.cast(1.0, w.dtype))

    def get_config(self) -> Dict[str, Any]:
        return {"axis": self.axis}


def project_onto_hyperplane(x: tf.Tensor, normal: tf.Tensor) -> tf.Tensor:
    """Eq. 6: `[..., d]` x, unit normals v (broadcastable) -> `x - (v.x) v`, `[..., d]`."""
    normal = tf.cast(normal, x.dtype)
    return x - tf.reduce_sum(x * normal, axis=-1, keepdims=True) * normal


def pack_query(proxy: tf.Tensor, short_term: tf.Tensor, normal: tf.Tensor) -> tf.Tensor:
    """`[B, d]` p, s and v -> the packed query `[B, 2, d] = stack(p + s_perp, v)`."""
    return tf.stack([proxy + project_onto_hyperplane(short_term, normal), normal], axis=1)


def _check_packed(queries: tf.Tensor) -> tf.Tensor:
    queries = tf.convert_to_tensor(queries)
    if queries.shape.rank != 3 or queries.shape[1] != 2:
        raise ValueError("ProxySR queries must be packed [B, 2, d] = stack(p + s_perp, v) "
                         f"(see pack_query); got shape {queries.shape}.")
    return queries


def packed_distance(queries: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """Eq. 7 from packed queries, `||a - I_perp||^2`, without a `[B, C, d]` tensor:
    `||a||^2 + ||I||^2 - 2 a.I + 2 (v.I)(a.v) + (v.I)^2 (||v||^2 - 2)`.

    Args:
        queries: `[B, 2, d]` packed queries (`pack_query`).
        items: `[C, d]` items (-> `[B, C]`) or `[B, K, d]` candidates (-> `[B, K]`).

    Raises:
        ValueError: queries not `[B, 2, d]` or items of another rank.
    """
    queries = _check_packed(queries)
    items = tf.cast(items, queries.dtype)
    a, v = queries[:, 0], queries[:, 1]
    if items.shape.rank == 2:
        a_items = tf.linalg.matmul(a, items, transpose_b=True)
        v_items = tf.linalg.matmul(v, items, transpose_b=True)
        item_norms = tf.reduce_sum(tf.square(items), axis=-1)[tf.newaxis]
    elif items.shape.rank == 3:
        a_items = tf.einsum("bd,bkd->bk", a, items)
        v_items = tf.einsum("bd,bkd->bk", v, items)
        item_norms = tf.reduce_sum(tf.square(items), axis=-1)
    else:
        raise ValueError(f"items must be [C, d] or [B, K, d]; got shape {items.shape}.")
    a_norm = tf.reduce_sum(tf.square(a), axis=-1, keepdims=True)
    v_norm = tf.reduce_sum(tf.square(v), axis=-1, keepdims=True)
    a_dot_v = tf.reduce_sum(a * v, axis=-1, keepdims=True)
    dist = (a_norm + item_norms - 2.0 * a_items + 2.0 * v_items * a_dot_v
            + tf.square(v_items) * (v_norm - 2.0))
    return tf.maximum(dist, 0.0)


def proxy_distance(proxy: tf.Tensor, short_term: tf.Tensor, normal: tf.Tensor,
                   items: tf.Tensor) -> tf.Tensor:
    """Eq. 7: `dist(s, i) = ||p + s_perp - I_perp||^2` (projections by eq. 6).

    Args:
        proxy, short_term, normal: `[B, d]` p, s (not projected) and unit v.
        items: `[C, d]` items (-> `[B, C]`) or `[B, K, d]` candidates (-> `[B, K]`).
    """
    return packed_distance(pack_query(proxy, short_term, normal), items)


def margin_loss(pos_dist: tf.Tensor, neg_dist: tf.Tensor,
                margin: Union[float, tf.Tensor]) -> tf.Tensor:
    """Eq. 8: `L = sum [m + dist(s, i+) - dist(s, i-)]_+`, a scalar sum (/ B for a mean).

    Args:
        pos_dist: `[B]` distances to the true next items.
        neg_dist: `[B, N]` distances to N negatives per session (or `[B]`).
        margin: m >= 0.
    """
    if isinstance(margin, (int, float)) and margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    neg_dist = tf.convert_to_tensor(neg_dist)
    pos_dist = tf.cast(pos_dist, neg_dist.dtype)
    if neg_dist.shape.rank == pos_dist.shape.rank + 1:
        pos_dist = pos_dist[..., tf.newaxis]
    return tf.reduce_sum(tf.nn.relu(tf.cast(margin, neg_dist.dtype) + pos_dist - neg_dist))


def regularisers(proxy: tf.Tensor, normal: tf.Tensor,
                 pos_dist: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Eq. 9: scalars `(sum dist(s, i+), sum |v.p| / ||p||)` from `[B, d]` p, v, `[B]`
    positive distances; `J = L + lambda_dist * reg_dist + lambda_orthog * reg_orthog`."""
    proxy = tf.convert_to_tensor(proxy)
    cosine = tf.abs(tf.reduce_sum(tf.cast(normal, proxy.dtype) * proxy, axis=-1)) / \
        tf.maximum(tf.norm(proxy, axis=-1), _EPS)
    return tf.reduce_sum(tf.cast(pos_dist, proxy.dtype)), tf.reduce_sum(cosine)
