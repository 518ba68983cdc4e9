"""PIR: proxy-based item representation (PIR paper §3.3, eqs. 11-18).

`ProxyItemEncoder` replaces the item id embedding table: a two-layer network maps an
item's attributes f and context c to n_proxy logits (eqs. 11-12: LeakyReLU, then
identity), the K most frequent training items add a learnable bias to them (eq. 18,
zero-initialised), a softmax turns them into proxy weights (eq. 13) and the proxy
representation is the weighted sum of n_proxy shared proxy embeddings (eq. 14), a
point of their convex hull. The attribute layer (eq. 15), the attribute-context
layer (eq. 16) and the item layer over `[PIR, z]` (eq. 17) give the item vector.

Its parameters grow with K, not with the catalogue: items outside the top K (tail
items, and items never seen in training) are embedded from their attributes alone,
so a new item is added to a trained model by giving its attributes. K = 0 is
content-only; with no attributes and no context the proxy weights come from the
bias alone (eq. 12's output bias plus eq. 18's), a low-rank factorisation with a
softmax.

Registered as item tower `"pir"` (`ModelConfig.item_tower`, `num_proxies`,
`frequent_bias_k`); usable as the candidate tower and, with
`ModelConfig.share_item_encoder`, as the item encoder of the user tower's sequence.
"""

from typing import Any, Dict, Mapping, Optional

import numpy as np

from tfrec_proxy._tf import tf
from tfrec_proxy.registry import ITEM_TOWERS

ITEM_ID = "item_id"
ATTRIBUTES = "attributes"
CONTEXT = "context"


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProxyItemEncoder(tf.keras.layers.Layer):
    """Item features -> item vector through proxy embeddings (PIR eqs. 11-18).

    The layer holds the catalogue's attribute and context tables (non-trainable,
    `[V, d_A]` and `[V, d_C]`, row = item index, set with `set_item_features`) and
    the top-K map (`set_frequent_items`), so the usual candidate input
    `{"item_id": ids}` is enough; both are checkpointed with the model. An input
    dict that carries `"attributes"` (and `"context"`) uses those instead of the
    tables: that is how items outside the vocabulary are embedded (give them the
    OOV index 1, which has no frequent-item bias).

    Args:
        vocab_size: V, item indices (padding 0 and OOV 1 included).
        output_dim: d, the item vector size.
        num_proxies: n_proxy, the shared proxy embeddings.
        frequent_bias_k: K, the most frequent items that learn a proxy-weight bias
            (eq. 18); 0 for none (content-only).
        attribute_dim: d_A (0: no attributes).
        context_dim: d_C (0: no context).
        proxy_dim: d_proxy (default d).
        hidden_dim: d_phi, eq. 11's width (default max(n_proxy, d)).
        attribute_units: d'_A, eq. 15's width (default d).
        context_units: d_AC, eq. 16's width (default d).

    Example:

        encoder = ProxyItemEncoder(vocab_size=102, output_dim=16, num_proxies=8,
                                   frequent_bias_k=10, attribute_dim=18)
        encoder.set_item_features(genres)  # float32 [102, 18]
        encoder.set_frequent_items(counts)  # [102] training counts
        vectors = encoder({"item_id": tf.constant([2, 3])})  # [2, 16]
        new = encoder({"item_id": tf.constant([1]),
                       "attributes": tf.constant(new_genres)})  # [1, 16]
    """

    def __init__(self, vocab_size: int, output_dim: int, num_proxies: int = 32,
                 frequent_bias_k: int = 0, attribute_dim: int = 0, context_dim: int = 0,
                 proxy_dim: Optional[int] = None, hidden_dim: Optional[int] = None,
                 attribute_units: Optional[int] = None, context_units: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("output_dim", output_dim),
                            ("num_proxies", num_proxies)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        for name, value in (("frequent_bias_k", frequent_bias_k),
                            ("attribute_dim", attribute_dim), ("context_dim", context_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        if attribute_dim == 0 and context_dim == 0 and frequent_bias_k == 0:
            raise ValueError("A PIR item tower without attributes and context needs "
                             "frequent_bias_k > 0: otherwise every item gets the same "
                             "vector.")
        self.vocab_size = vocab_size
        self.output_dim = output_dim
        self.num_proxies = num_proxies
        # Only real items (indices 2..V-1) can be frequent.
        self.frequent_bias_k = min(frequent_bias_k, max(vocab_size - 2, 0))
        self.attribute_dim = attribute_dim
        self.context_dim = context_dim
        self.proxy_dim = proxy_dim or output_dim
        self.hidden_dim = hidden_dim or max(num_proxies, output_dim)
        self.attribute_units = attribute_units or output_dim
        self.context_units = context_units or output_dim
        leaky = tf.keras.layers.LeakyReLU
        self._phi_hidden = self._phi_out = None
        if attribute_dim + context_dim:
            self._phi_hidden = tf.keras.layers.Dense(self.hidden_dim, activation=leaky(),
                                                     name="phi_1")  # eq. 11
            self._phi_out = tf.keras.layers.Dense(num_proxies, name="phi_2")  # eq. 12
        self._attribute_layer = None
        if attribute_dim:
            self._attribute_layer = tf.keras.layers.Dense(  # eq. 15
                self.attribute_units, activation=leaky(), name="attribute")
        self._context_layer = None
        if attribute_dim + context_dim:
            self._context_layer = tf.keras.layers.Dense(  # eq. 16
                self.context_units, activation=leaky(), name="attribute_context")
        self._item_layer = tf.keras.layers.Dense(output_dim, name="item")  # eq. 17

    def build(self, input_shape: Any) -> None:
        self.proxies = self.add_weight(name="proxies", shape=[self.num_proxies,
                                                               self.proxy_dim],
                                       initializer="glorot_uniform", trainable=True)
        if self._phi_out is None:
            # No inputs to eq. 11: eq. 12 reduces to its output bias b^(phi,2).
            self.proxy_logit_bias = self.add_weight(
                name="proxy_logit_bias", shape=[self.num_proxies], initializer="zeros",
                trainable=True)
        if self.frequent_bias_k:
            self.frequent_bias = self.add_weight(  # eq. 18, zero-initialised (§4.1.4)
                name="frequent_bias", shape=[self.frequent_bias_k, self.num_proxies],
                initializer="zeros", trainable=True)
        # Row of `frequent_bias` per item index; K (no row) for items outside the top K.
        self.bias_index = self.add_weight(
            name="bias_index", shape=[self.vocab_size], dtype=tf.int32,
            initializer=tf.keras.initializers.Constant(self.frequent_bias_k),
            trainable=False)
        self.attribute_table = self.add_weight(
            name="attribute_table", shape=[self.vocab_size, self.attribute_dim],
            initializer="zeros", trainable=False)
        self.context_table = self.add_weight(
            name="context_table", shape=[self.vocab_size, self.context_dim],
            initializer="zeros", trainable=False)
        super().build(input_shape)

    def _ensure_built(self) -> None:
        if not self.built:
            self.build(None)

    def set_item_features(self, attributes: Optional[np.ndarray] = None,
                          context: Optional[np.ndarray] = None) -> None:
        """Sets the catalogue's `[V, d_A]` attributes and `[V, d_C]` context."""
        self._ensure_built()
        for name, table, values, width in (
                ("attributes", self.attribute_table, attributes, self.attribute_dim),
                ("context", self.context_table, context, self.context_dim)):
            if values is None:
                if width:
                    raise ValueError(f"This encoder has {name} of width {width}; got none.")
                continue
            values = np.asarray(values, np.float32)
            if values.shape != (self.vocab_size, width):
                raise ValueError(f"{name} must have shape ({self.vocab_size}, {width}) (one "
                                 f"row per item index); got {values.shape}.")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{name} hold NaN or infinite values.")
            table.assign(values)

    def set_frequent_items(self, counts: np.ndarray) -> np.ndarray:
        """Gives the K items with the most training interactions a bias row (eq. 18).

        Args:
            counts: `[V]` training counts by item index; ties go to the smaller
                index; padding, OOV and items never seen get no row.

        Returns:
            The `[<=K]` item indices that got a row, in row order.
        """
        self._ensure_built()
        counts = np.asarray(counts, np.float64)
        if counts.shape != (self.vocab_size,):
            raise ValueError(f"counts must have shape ({self.vocab_size},); got "
                             f"{counts.shape}.")
        real = np.arange(2, self.vocab_size)
        order = real[np.argsort(-counts[2:], kind="stable")]
        frequent = order[counts[order] > 0][:self.frequent_bias_k]
        index = np.full(self.vocab_size, self.frequent_bias_k, np.int32)
        index[frequent] = np.arange(len(frequent), dtype=np.int32)
        self.bias_index.assign(index)
        return frequent

    def _inputs(self, features: Mapping[str, tf.Tensor]):
        if ITEM_ID not in features:
            raise KeyError(f"ProxyItemEncoder needs the feature {ITEM_ID!r}; got "
                           f"{sorted(features)}.")
        ids = tf.reshape(features[ITEM_ID], [-1])
        own = {}
        for name, table, width in ((ATTRIBUTES, self.attribute_table, self.attribute_dim),
                                   (CONTEXT, self.context_table, self.context_dim)):
            if name in features:
                own[name] = tf.reshape(tf.cast(features[name], tf.float32), [-1, width])
            else:
                own[name] = tf.gather(table, ids)
        return ids, own[ATTRIBUTES], own[CONTEXT]

    def proxy_logits(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Eqs. 11, 12 and 18: `[N, n_proxy]` logits of the flattened items."""
        self._ensure_built()
        ids, attributes, context = self._inputs(features)
        if self._phi_out is None:
            logits = tf.tile(self.proxy_logit_bias[tf.newaxis], [tf.size(ids), 1])
        else:
            logits = self._phi_out(self._phi_hidden(tf.concat([attributes, context], -1)))
        if self.frequent_bias_k:
            row = tf.gather(self.bias_index, ids)
            has_row = tf.cast(row < self.frequent_bias_k, logits.dtype)[:, tf.newaxis]
            bias = tf.gather(self.frequent_bias, tf.minimum(row, self.frequent_bias_k - 1))
            logits = logits + has_row * tf.cast(bias, logits.dtype)
        return logits

    def proxy_weights(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Eq. 13: `[N, n_proxy]` proxy weights (rows sum to 1) of the flattened items."""
        return tf.nn.softmax(tf.cast(self.proxy_logits(features), tf.float32), axis=-1)

    def call(self, features: Mapping[str, tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Embeds items.

        Args:
            features: `{"item_id": int [...]}` item indices of any shape, optionally
                with `"attributes"` `[..., d_A]` and `"context"` `[..., d_C]`
                overriding the tables.
            training: Keras training flag.

        Returns:
            `[..., d]` float32 item vectors (the shape of `item_id` plus d).
        """
        self._ensure_built()
        _, attributes, context = self._inputs(features)
        weights = tf.nn.softmax(self.proxy_logits(features), axis=-1)  # eq. 13
        representation = tf.matmul(weights, tf.cast(self.proxies, weights.dtype))  # eq. 14
        parts = [representation]
        if self._context_layer is not None:
            joined = [context] if self.context_dim else []
            if self._attribute_layer is not None:
                joined.insert(0, self._attribute_layer(attributes))  # eq. 15
            parts.append(self._context_layer(tf.concat(joined, -1)))  # eq. 16
        vectors = self._item_layer(tf.concat([tf.cast(p, parts[0].dtype) for p in parts],
                                             -1))  # eq. 17
        shape = tf.concat([tf.shape(features[ITEM_ID]), [self.output_dim]], 0)
        return tf.reshape(tf.cast(vectors, tf.float32), shape)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, output_dim=self.output_dim,
                      num_proxies=self.num_proxies, frequent_bias_k=self.frequent_bias_k,
                      attribute_dim=self.attribute_dim, context_dim=self.context_dim,
                      proxy_dim=self.proxy_dim, hidden_dim=self.hidden_dim,
                      attribute_units=self.attribute_units,
                      context_units=self.context_units)
        return config


@ITEM_TOWERS.register("pir", attributes=True)
def build_pir_tower(config: Any, context: Any) -> ProxyItemEncoder:
    """The `"pir"` item tower: `ModelConfig.num_proxies` proxies, the top
    `frequent_bias_k` items biased, the run's item features (`context.item_features`,
    none: the bias-only factorisation) and training counts (`context.item_counts`;
    none when restoring: the checkpoint holds the top-K map)."""
    features = context.item_features
    encoder = ProxyItemEncoder(
        context.vocab_size, config.embedding_dim, num_proxies=config.num_proxies,
        frequent_bias_k=config.frequent_bias_k,
        attribute_dim=features.attribute_dim if features is not None else 0,
        context_dim=features.context_dim if features is not None else 0,
        name="candidate_tower")
    if features is not None:
        encoder.set_item_features(features.attributes if features.attribute_dim else None,
                                  features.context if features.context_dim else None)
    if context.item_counts is not None:
        encoder.set_frequent_items(context.item_counts)
    return encoder
