"""RAM: recursive attention with reused item representations (Peng et al., §5).

* `RAMEncoder` (eqs. 2-4): E = item + position embeddings; every block's queries
  come from the previous block's output h^(m-1) and its keys/values are always E
  ("reused item representations"), never the previous block's output.
* `UserEmbedding` (eq. 5's u): a long-term embedding per known raw user id, added to
  the encoder's short-term h in `r = (h + u) v^T`; unknown users get u = 0.
"""

from typing import Any, Dict, Optional, Sequence

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.sasrec import BlockEncoder, build_block_encoder
from tfrec_proxy.registry import ENCODERS

# Id table entries before `set_users` or a weight restore: matches no real user
# unless one has this id.
_NO_USER = np.iinfo(np.int64).max


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class RAMEncoder(BlockEncoder):
    """RAM's attention blocks: item-id history -> `[B, L, d]` hidden states.

    Per position i (causal; padding masked): `E = (V[b] + P) * mask` (eq. 2, padded
    rows zero as the paper's constant zero padding embedding), dropout;
    `h^(0) = E` (row i is e_i, the paper's `h^(0) = e_n` for the last position);
    for m = 1..num_layers (the paper's n_b):
    `g = h^(m-1) + MHA(query=LN(h^(m-1)), key=E, value=E)` (eq. 3) and
    `h^(m) = (g + FFN(LN(g))) * mask` (eq. 4, two Dense d -> d, ReLU between);
    the output is `LN(h^(n_b))`.

    The paper names only residual connections around its attention and
    feed-forward layers; the LayerNorms (pre-norm on the queries and before the
    feed-forward layer, one at the output) are our addition, as in SASRec, which RAM
    follows and against which it is compared. E itself is not normed (keys/values
    as in SASRec). Dropout is `AttentionBlock`'s (attention weights, feed-forward).

    The block count is `num_layers`, the name `SelfAttentionEncoder` uses, so the
    encoders take the same arguments.

    Args:
        vocab_size: Number of item indices (padding and OOV included).
        dim: Model width d.
        max_len: Longest history L (the paper's n).
        num_layers: Number of attention blocks n_b.
        num_heads: Attention heads per block n_h.
        dropout: Dropout rate.
        causal: Causal attention (position i sees items <= i), which lets one pass
            give every prefix's representation.
        num_positions: Distinct position embeddings (default `max_len`).
        oov_rate: Training-time share of history items replaced by the OOV index 1.
        item_encoder: Optional layer `{"item_id": [B, L]}` -> `[B, L, dim]` used
            instead of the own id table V (e.g. the shared item tower).

    Example:

        encoder = RAMEncoder(vocab_size=100, dim=16, max_len=30, num_layers=3)
        hidden = encoder(tf.constant([[0, 0, 5, 7]]))  # [1, 4, 16]
    """

    # RAM: g = h + attention (residual from h, not from the normed query).
    block_options = {"residual_from_normed_query": False}

    def keys_values(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """The reused item representations E that every block attends over.

        Args:
            history: `[B, L]` int item indices, left-padded with 0.
            training: Keras training flag (OOV replacement and dropout).

        Returns:
            `[B, L, d]` E (eq. 2, after dropout), zero rows at padding.
        """
        return self.embed(history, training=training)[0]

    def call(self, history: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        """Encodes histories.

        Args:
            history: `[B, L]` int item indices, left-padded with 0, `L <= max_len`.
            training: Keras training flag.

        Returns:
            `[B, L, d]` hidden states `LN(h^(n_b))` (padded positions hold the final
            LayerNorm's bias; the extraction ignores them through `compute_mask`).
        """
        items, mask = self.embed(history, training=training)
        hidden = items
        for block in self.blocks:
            # Keys/values are E in every block, never the previous block's output.
            hidden = block(hidden, items, mask=mask, training=training)
        return self._output_norm(hidden)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class UserEmbedding(tf.keras.layers.Layer):
    """RAM eq. 5's long-term user embedding u: raw user id -> `[d]` vector.

    Known ids are stored sorted in a non-trainable int64 weight (so they are
    checkpointed and exported with the embeddings); a raw id is looked up with
    `tf.searchsorted` and an equality check, without `tf.lookup` tables. The k-th
    smallest known id owns row k + 1 of a trainable `[num_users + 1, d]`
    `Embedding`; row 0 is for unknown users and is never read: their u is exactly 0
    (and no gradient reaches row 0), so a user unseen in training is scored as by
    RAM-u, `r = h v^T`, instead of with an untrained vector. The table starts at
    zero by default, so training starts from RAM-u's scores and u grows where it
    helps (the gradient of `(h + u) . v` in u is v, not 0).

    The config holds `num_users`, not the ids: a layer rebuilt from its config gets
    its ids from `set_users`, `set_weights` or a checkpoint.

    Args:
        dim: Embedding size d (the encoder's width).
        user_ids: Known raw user ids (distinct); their count sets `num_users`.
        num_users: Number of known users, when `user_ids` is not given yet.
        embeddings_initializer: Initializer of the user table (default zeros).

    Example:

        users = UserEmbedding(dim=16, user_ids=[1001, 42, 7])
        u = users(tf.constant([42, 5], tf.int64))  # [2, 16]; u of user 5 is 0
        h, v = tf.random.normal([2, 16]), tf.random.normal([100, 16])
        scores = tf.linalg.matmul(h + u, v, transpose_b=True)  # eq. 5, [2, 100]
    """

    def __init__(self, dim: int, user_ids: Optional[Sequence[int]] = None,
                 num_users: Optional[int] = None, embeddings_initializer: Any = "zeros",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}.")
        self._pending_ids = None
        if user_ids is not None:
            self._pending_ids = self._sorted_ids(user_ids)
            if num_users is not None and num_users != len(self._pending_ids):
                raise ValueError(f"num_users={num_users} does not match the "
                                 f"{len(self._pending_ids)} user_ids given.")
            num_users = len(self._pending_ids)
        if num_users is None or num_users < 1:
            raise ValueError(f"UserEmbedding needs user_ids or num_users >= 1, got "
                             f"num_users={num_users}.")
        self.dim = dim
        self.num_users = int(num_users)
        self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)
        self.embedding = tf.keras.layers.Embedding(
            self.num_users + 1, dim, embeddings_initializer=self.embeddings_initializer,
            name="user_embedding")

    @staticmethod
    def _sorted_ids(user_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"user_ids must be distinct; repeated: "
                             f"{unique[counts > 1][:10].tolist()}.")
        return unique

    def build(self, input_shape: Optional[tf.TensorShape] = None) -> None:
        initial = (np.full([self.num_users], _NO_USER, np.int64)
                   if self._pending_ids is None else self._pending_ids)
        self.user_ids = self.add_weight(
            name="user_ids", shape=[self.num_users], dtype=tf.int64, trainable=False,
            initializer=tf.keras.initializers.Constant(initial))
        self._pending_ids = None
        self.embedding.build(tf.TensorShape([None]))
        super().build(input_shape)

    def set_users(self, user_ids: Sequence[int]) -> None:
        """Replaces the known ids (eagerly); row k + 1 goes to the k-th smallest id.

        Rows are not moved: call it before training, or with the same ids.

        Raises:
            ValueError: the ids repeat or their count is not `num_users`.
        """
        ids = self._sorted_ids(user_ids)
        if len(ids) != self.num_users:
            raise ValueError(f"set_users got {len(ids)} ids; this layer has "
                             f"num_users={self.num_users}.")
        if not self.built:
            self.build()
        self.user_ids.assign(ids)

    def rows(self, user_ids: tf.Tensor) -> tf.Tensor:
        """`[B]` raw ids -> `[B]` int32 table rows (0 for unknown users)."""
        if not self.built:
            self.build()
        ids = tf.cast(tf.reshape(user_ids, [-1]), tf.int64)
        index = tf.minimum(tf.searchsorted(self.user_ids, ids, side="left"),
                           self.num_users - 1)
        known = tf.equal(tf.gather(self.user_ids, index), ids)
        rows = tf.where(known, tf.cast(index, tf.int32) + 1, tf.zeros_like(index, tf.int32))
        return tf.reshape(rows, tf.shape(user_ids))

    def call(self, user_ids: tf.Tensor) -> tf.Tensor:
        """Looks users up.

        Args:
            user_ids: `[B]` int raw user ids.

        Returns:
            `[B, d]` user embeddings u; exactly 0 for ids not in the table.
        """
        rows = self.rows(user_ids)
        known = tf.cast(rows > 0, self.compute_dtype)[..., tf.newaxis]
        return self.embedding(rows) * known

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, num_users=self.num_users,
                      embeddings_initializer=tf.keras.initializers.serialize(
                          self.embeddings_initializer))
        return config


@ENCODERS.register("ram", user_embedding=True)
def build_ram_encoder(config: Any, context: Any,
                      item_encoder: Optional[tf.keras.layers.Layer]) -> RAMEncoder:
    """`"ram"`: RAM's `ModelConfig.num_layers` (n_b) attention blocks over reused item
    representations; the query tower adds the user embedding u (eq. 5)."""
    return build_block_encoder(RAMEncoder, config, context, item_encoder)


@ENCODERS.register("ram-u")
def build_ram_u_encoder(config: Any, context: Any,
                        item_encoder: Optional[tf.keras.layers.Layer]) -> RAMEncoder:
    """`"ram-u"`: RAM without the user embedding."""
    return build_block_encoder(RAMEncoder, config, context, item_encoder)
