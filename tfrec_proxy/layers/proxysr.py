"""ProxySR: session proxies imitating a user's general interest (Cho et al., §3).

* `ProxySelection` (eqs. 1-3, 10): `pi = softmax((f^P(s) + u) / tau)`, the proxy
  `p = gamma * pi P` and eq. 6's unit normal `v = pi V / ||pi V||`. Eq. 2's soft
  selection serves training and serving alike (at tau = T_E = 0.01 it is all but
  one-hot); `TemperatureAnnealing` sets tau per epoch (§4.1.4).
* `ShortTermEncoder` (eq. 5): self-attention read out at the most recent item, with
  REVERSE positional embeddings (position 0 = the most recent item).
* `ProxySessionEncoder`: `[B, L]` history (+ user ids) -> packed query `[B, 2, d]`.
* `ProxyDistanceScorer` (scorer `"proxysr"`): `-dist(s, i)`, eq. 7.
* In `tfrec_proxy.layers.proxy_geometry` (re-exported here): `project_onto_hyperplane`
  (eq. 6), `proxy_distance` (eq. 7), `margin_loss` (eq. 8), `regularisers` (eq. 9),
  `UnitBallConstraint` (embeddings in the unit ball); `TemperatureAnnealing` here.

Packed query layout (`pack_query`): `[:, 0] = a = p + s_perp` (the proxy plus the
short-term interest projected on the proxy's hyperplane), `[:, 1] = v`. Eq. 7 is then
exactly `||a - I_perp||^2`, `I_perp = I - (v.I) v`: two vectors carry all eq. 7 needs
and fit the toolkit's `[B, M, d]` query seam, so export and serving need no change.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tfrec_proxy._tf import tf
from tfrec_proxy.layers.encoders import embed_history_items
from tfrec_proxy.layers.ram import UserEmbedding
from tfrec_proxy.layers.towers import USER_ID, history_of
from tfrec_proxy.registry import ENCODERS, SCORERS
from tfrec_proxy.scoring import Scorer
from tfrec_proxy.layers.proxy_geometry import (  # noqa: F401 (re-exported)
    _EPS, _MASKED, UnitBallConstraint, _check_packed, margin_loss, pack_query,
    packed_distance, project_onto_hyperplane, proxy_distance, regularisers)

def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _weight(layer: tf.keras.layers.Layer, name: str, shape: List[int],
            stddev: Optional[float] = None, ball: bool = False) -> tf.Variable:
    """Glorot-uniform, or N(0, stddev^2) rows kept in the unit ball when `ball`."""
    initializer = ("glorot_uniform" if stddev is None
                   else tf.keras.initializers.RandomNormal(stddev=stddev))
    return layer.add_weight(name=name, shape=shape, initializer=initializer,
                            constraint=UnitBallConstraint() if ball else None)


def _session_inputs(items: tf.Tensor, mask: Optional[tf.Tensor], table: tf.Variable,
                    reverse: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(mask, items + positional embeddings)`; positions count real items from the
    oldest (or, `reverse`, the most recent) one, clamped to the table."""
    if mask is None:
        mask = tf.ones(tf.shape(items)[:2], tf.bool)
    positions = tf.cumsum(tf.cast(mask, tf.int32), axis=1, reverse=reverse) - 1
    positions = tf.clip_by_value(positions, 0, int(table.shape[0]) - 1)
    return mask, items + tf.gather(tf.cast(table, items.dtype), positions)


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProxySelection(tf.keras.layers.Layer):
    """Eqs. 1-3 and 6's v: `[B, L, d]` session item embeddings -> the proxy `[B, d]`.

    `alpha = 1/n sum_j W2^T LeakyReLU_0.1(W1^T (I_sj + E^P_j))` over the n real
    positions (forward positions, 0 = oldest real item; W1 `d x (d + K) // 2`, W2
    `(d + K) // 2 x K`, no biases), `pi = softmax((alpha + u) / tau)`,
    `p = gamma * sum_j pi_j P_j`, `gamma = sum_j pi_j ||P_j|| / ||sum_j pi_j P_j||`,
    `v = sum_j pi_j V_j / ||sum_j pi_j V_j||`. P and E^P stay in the unit ball;
    `||V_j|| = 1` holds by normalising V's rows in the forward pass (not by a
    regulariser). tau is the non-trainable `temperature` variable, created with the
    layer so that `TemperatureAnnealing` finds it before the first batch.

    Args:
        num_proxies: K.
        max_len: Positional embeddings (positions past it share the last one).
        initial_temperature: tau before any annealing (T_0).

    Example:

        selection = ProxySelection(num_proxies=10, max_len=30)
        items, mask = tf.random.normal([2, 30, 16]), tf.ones([2, 30], tf.bool)
        proxy = selection(items, mask)  # [2, 16]
        pi, proxy, normal = selection(items, mask, return_components=True)
    """

    def __init__(self, num_proxies: int, max_len: int, initial_temperature: float = 3.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive_int("num_proxies (K)", num_proxies)
        _check_positive_int("max_len", max_len)
        if not initial_temperature > 0:
            raise ValueError(f"initial_temperature must be > 0, got {initial_temperature}.")
        self.num_proxies, self.max_len = num_proxies, max_len
        self.initial_temperature = float(initial_temperature)
        self.temperature = self.add_weight(
            name="temperature", shape=[], trainable=False,
            initializer=tf.keras.initializers.Constant(self.initial_temperature))

    def build(self, input_shape: tf.TensorShape) -> None:
        dim, k = int(input_shape[-1]), self.num_proxies
        hidden = (dim + k) // 2
        self.position_embedding = _weight(self, "position_embedding", [self.max_len, dim],
                                          0.05, ball=True)
        self.hidden_kernel = _weight(self, "hidden_kernel", [dim, hidden])
        self.logit_kernel = _weight(self, "logit_kernel", [hidden, k])
        self.proxies = _weight(self, "proxies", [k, dim], dim ** -0.5, ball=True)
        self.normals = _weight(self, "normals", [k, dim], dim ** -0.5)
        super().build(input_shape)

    def call(self, items: tf.Tensor, mask: Optional[tf.Tensor] = None,
             user_bias: Optional[tf.Tensor] = None, return_components: bool = False
             ) -> Union[tf.Tensor, Tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        """Selects the proxy.

        Args:
            items: `[B, L, d]` item embeddings; mask: `[B, L]` bool, True at real
                positions (all real when None); user_bias: `[B, K]` eq. 10's u or None.
            return_components: Return `(pi [B, K], p [B, d], v [B, d])`, not `p`.

        Returns:
            `[B, d]` proxies p (or the tuple above).
        """
        mask, x = _session_inputs(items, mask, self.position_embedding, reverse=False)
        real = tf.cast(mask, items.dtype)[..., tf.newaxis]
        hidden = tf.nn.leaky_relu(tf.einsum("bld,dh->blh", x, self.hidden_kernel), 0.1)
        per_item = tf.einsum("blh,hk->blk", hidden, self.logit_kernel)
        count = tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
        logits = tf.reduce_sum(per_item * real, axis=1) / count  # eq. 3, [B, K]
        if user_bias is not None:
            logits += tf.cast(user_bias, logits.dtype)  # eq. 10
        weights = tf.nn.softmax(logits / tf.cast(self.temperature, logits.dtype))  # eq. 1
        mixed = tf.linalg.matmul(weights, self.proxies)
        gamma = tf.linalg.matvec(weights, tf.norm(self.proxies, axis=-1)) / \
            tf.maximum(tf.norm(mixed, axis=-1), _EPS)
        proxy = gamma[:, tf.newaxis] * mixed  # eq. 2
        normal = tf.math.l2_normalize(tf.linalg.matmul(
            weights, tf.math.l2_normalize(self.normals, axis=-1)), axis=-1, epsilon=_EPS)
        return (weights, proxy, normal) if return_components else proxy

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_proxies=self.num_proxies, max_len=self.max_len,
                      initial_temperature=self.initial_temperature)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ShortTermEncoder(tf.keras.layers.Layer):
    """Eq. 5: `[B, L, d]` session item embeddings -> short-term interest s `[B, d]`.

    `X = I_s + E^S` with REVERSE positions (0 = the most recent real item),
    `Q = ReLU(X W_Q)`, `K = ReLU(X W_K)`, `A = softmax(Q K^T / sqrt(d))` over the real
    positions, `Z = A X + X`, `s = W2^T ReLU(W1^T Z_n + b1) + b2`. Only row n (the
    last column of left-padded histories: the most recent item) is computed.

    Args:
        max_len: Positional embeddings (positions past it share the last one).

    Example:

        encoder = ShortTermEncoder(max_len=30)
        s = encoder(tf.random.normal([2, 30, 16]), tf.ones([2, 30], tf.bool))  # [2, 16]
    """

    def __init__(self, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_positive_int("max_len", max_len)
        self.max_len = max_len

    def build(self, input_shape: tf.TensorShape) -> None:
        dim = int(input_shape[-1])
        self.position_embedding = _weight(self, "position_embedding", [self.max_len, dim],
                                          0.05, ball=True)
        self.query_kernel = _weight(self, "query_kernel", [dim, dim])
        self.key_kernel = _weight(self, "key_kernel", [dim, dim])
        self.hidden = tf.keras.layers.Dense(dim, activation="relu", name="hidden")
        self.output_dense = tf.keras.layers.Dense(dim, name="output")
        self.hidden.build(tf.TensorShape([None, dim]))
        self.output_dense.build(tf.TensorShape([None, dim]))
        super().build(input_shape)

    def call(self, items: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        """`[B, L, d]` left-padded item embeddings (+ `[B, L]` bool mask) -> `[B, d]` s."""
        mask, x = _session_inputs(items, mask, self.position_embedding, reverse=True)
        last = x[:, -1]
        query = tf.nn.relu(tf.linalg.matmul(last, self.query_kernel))  # [B, d]
        keys = tf.nn.relu(tf.einsum("bld,de->ble", x, self.key_kernel))
        logits = tf.einsum("bd,bld->bl", query, keys) / tf.sqrt(
            tf.cast(tf.shape(items)[-1], items.dtype))
        logits = tf.where(mask, logits, tf.cast(_MASKED, logits.dtype))
        z = tf.einsum("bl,bld->bd", tf.nn.softmax(logits, axis=-1), x) + last
        return self.output_dense(self.hidden(z))

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(max_len=self.max_len)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProxySessionEncoder(tf.keras.layers.Layer):
    """ProxySR's query tower: `[B, L]` history -> packed query `[B, 2, d]`.

    Layout: `[:, 0] = p + s_perp`, `[:, 1] = v` (`pack_query`), scored by
    `ProxyDistanceScorer`; `components` gives pi, p, s and v for eq. 9. Item
    embeddings (own table in the unit ball, or `item_encoder`, shared with the item
    tower) feed both `ProxySelection` and `ShortTermEncoder`. With `num_users`, known
    users add a learned bias u to the selection logits (eq. 10; `UserEmbedding`:
    unknown ids get u = 0, the anonymous logits). Training on every prefix with the
    whole session's proxy (§3.2.1) is not provided: one history gives one query.

    Args:
        vocab_size, dim, num_proxies, max_len: Item indices (0 = padding), d, K, L.
        num_users: Known users for eq. 10's bias (None: no user bias).
        user_ids: Their raw ids (distinct; sets `num_users`); a layer rebuilt from its
            config gets them back from its weights (`UserEmbedding`).
        initial_temperature: T_0.
        item_encoder: Optional `{"item_id": [B, L]} -> [B, L, d]` layer replacing the
            own item table.

    Example:

        encoder = ProxySessionEncoder(vocab_size=100, dim=16, num_proxies=10, max_len=30)
        queries = encoder(tf.constant([[0, 0, 5, 7]]))  # [1, 2, 16]
        scores = ProxyDistanceScorer()(queries, encoder.item_embedding.embeddings)
    """

    def __init__(self, vocab_size: int, dim: int, num_proxies: int, max_len: int,
                 num_users: Optional[int] = None, initial_temperature: float = 3.0,
                 item_encoder: Optional[tf.keras.layers.Layer] = None,
                 lambda_orthog: float = 0.0, user_ids: Optional[Sequence[int]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not lambda_orthog >= 0:
            raise ValueError(f"lambda_orthog must be >= 0, got {lambda_orthog}.")
        self.lambda_orthog = float(lambda_orthog)
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("dim", dim)
        if user_ids is not None:
            if num_users is not None and num_users != len(user_ids):
                raise ValueError(f"num_users={num_users} does not match the "
                                 f"{len(user_ids)} user_ids given.")
            num_users = len(user_ids)
        if num_users is not None:
            _check_positive_int("num_users", num_users)
        self.vocab_size, self.dim, self.num_proxies = vocab_size, dim, num_proxies
        self.max_len, self.num_users = max_len, num_users
        self.initial_temperature = initial_temperature
        self.item_encoder = item_encoder
        self.item_embedding = None if item_encoder is not None else \
            tf.keras.layers.Embedding(vocab_size, dim, name="item_embedding",
                                      embeddings_constraint=UnitBallConstraint())
        self.selection = ProxySelection(num_proxies, max_len, initial_temperature,
                                        name="proxy_selection")
        self.short_term = ShortTermEncoder(max_len, name="short_term")
        self.user_bias = None if num_users is None else \
            UserEmbedding(num_proxies, user_ids=user_ids, num_users=num_users,
                          name="user_bias")

    @property
    def temperature(self) -> tf.Variable:
        """The selection's tau variable (for `TemperatureAnnealing`)."""
        return self.selection.temperature

    def components(self, history: tf.Tensor, user_id: Optional[tf.Tensor] = None,
                   training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
        """`{"weights": pi [B, K], "proxy": p, "short_term": s, "normal": v}` (`[B, d]`).

        Raises:
            ValueError: `user_id` given to an encoder without `num_users`.
        """
        mask = tf.not_equal(history, 0)
        items = embed_history_items(self, history, training)
        bias = None
        if user_id is not None:
            if self.user_bias is None:
                raise ValueError("user_id was given but this ProxySessionEncoder has no "
                                 "user bias; build it with num_users.")
            bias = self.user_bias(user_id)
        weights, proxy, normal = self.selection(items, mask=mask, user_bias=bias,
                                                return_components=True)
        short_term = self.short_term(items, mask=mask)
        return {"weights": weights, "proxy": proxy, "short_term": short_term,
                "normal": normal}

    def call(self, history: tf.Tensor, user_id: Optional[tf.Tensor] = None,
             training: Optional[bool] = None) -> tf.Tensor:
        """`[B, L]` left-padded item indices (+ `[B]` raw user ids for eq. 10) ->
        `[B, 2, d]` packed queries `stack(p + s_perp, v)`."""
        parts = self.components(history, user_id, training=training)
        if training and self.lambda_orthog:
            # Eq. 9's orthogonality regulariser, lambda_orthog * sum |v.p| / ||p||,
            # enters the training loss through Keras's layer losses.
            cosine = tf.abs(tf.reduce_sum(parts["normal"] * parts["proxy"], axis=-1)) / \
                tf.maximum(tf.norm(parts["proxy"], axis=-1), _EPS)
            self.add_loss(self.lambda_orthog * tf.reduce_sum(tf.cast(cosine, tf.float32)))
        return pack_query(parts["proxy"], parts["short_term"], parts["normal"])

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim,
                      num_proxies=self.num_proxies, max_len=self.max_len,
                      num_users=self.num_users,
                      initial_temperature=self.initial_temperature,
                      lambda_orthog=self.lambda_orthog)
        if self.item_encoder is not None:
            config["item_encoder"] = tf.keras.layers.serialize(self.item_encoder)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "ProxySessionEncoder":
        config = dict(config)
        if config.get("item_encoder") is not None:
            config["item_encoder"] = tf.keras.layers.deserialize(config["item_encoder"])
        return cls(**config)


@SCORERS.register("proxysr")
@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProxyDistanceScorer(Scorer):
    """Eq. 7 as a score: `s(q, i) = -||a - I_perp||^2` for packed `[B, 2, d]` queries.

    Probe vector (ANN candidate generation): with unit v, `a = a_perp + (a.v) v` and
    `I_perp` orthogonal to v, so `-dist = -(a.v)^2 - ||a_perp||^2 + 2 a_perp.I
    - ||I_perp||^2`. Per query the first two terms are constant, so items rank by
    `2 a_perp.I - ||I_perp||^2`; the probe is `a_perp` (P = 1), dropping
    `||I_perp||^2`, which lies in [0, 1] for unit-ball items. If `L_k` is the k-th
    largest `2 a_perp.I`, every exact top-k item has `2 a_perp.I >= L_k - 1`, so a
    probe list covering those is exact after the re-rank with `score_candidates`. The
    drop is mild while `||a_perp||` is large against the spread of item norms (trained
    ProxySR: p and items near the unit sphere); with short `a_perp` and items of very
    different norms, raise the probe list length or use the brute-force index.
    Registered as `"proxysr"` when this module is imported.

    Example:

        p, s = tf.random.normal([2, 16]), tf.random.normal([2, 16])
        v = tf.math.l2_normalize(tf.random.normal([2, 16]), axis=-1)
        scorer = ProxyDistanceScorer()
        scores = scorer.score_matrix(pack_query(p, s, v), tf.random.normal([100, 16]))
    """

    def score_matrix(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        return -packed_distance(queries, _rank(candidates, 2, "score_matrix", "[C, d]"))

    def score_candidates(self, queries: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        return -packed_distance(queries, _rank(candidates, 3, "score_candidates",
                                               "[B, K, d]"))

    def probe_vectors(self, queries: tf.Tensor) -> tf.Tensor:
        """`[B, 1, d]` probes `a_perp = a - (a.v) v` (see the class docstring)."""
        queries = _check_packed(queries)
        return project_onto_hyperplane(queries[:, 0], queries[:, 1])[:, tf.newaxis]


def _rank(candidates: tf.Tensor, rank: int, method: str, shape: str) -> tf.Tensor:
    candidates = tf.convert_to_tensor(candidates)
    if candidates.shape.rank != rank:
        raise ValueError(f"{method} needs {shape} candidates; got {candidates.shape}.")
    return candidates


def annealed_temperature(epoch: int, initial: float = 3.0, final: float = 0.01,
                         anneal_epochs: int = 10) -> float:
    """§4.1.4: `tau_e = T_0 (T_E / T_0)^(e / E)` for `e < E`, `T_E` from epoch E on."""
    if epoch >= anneal_epochs:
        return float(final)
    return float(initial * (final / initial) ** (max(epoch, 0) / anneal_epochs))


class TemperatureAnnealing(tf.keras.callbacks.Callback):
    """Sets ProxySR's tau at each epoch begin by `annealed_temperature`.

    Resuming: the schedule epoch is Keras's epoch or, if larger, one past the last
    epoch this callback annealed. So `fit(initial_epoch=k)` (and `BackupAndRestore`)
    continue at epoch k, and a callback restored with `set_state(get_state())` (e.g.
    from a run's saved state) continues its schedule even when a later `fit` counts
    epochs from 0 again; one instance spanning several `fit` calls keeps annealing.
    The temperature variables are model weights, so checkpoints hold the last tau.

    Args:
        target: A `tf.Variable`, a layer with a `temperature` variable
            (`ProxySelection`, `ProxySessionEncoder`), or None: every
            `ProxySelection` inside the model being fitted.
        initial: T_0. final: T_E. anneal_epochs: E.

    Example:

        annealing = TemperatureAnnealing(encoder)
        model.fit(data, epochs=20, callbacks=[annealing])
        state = annealing.get_state()  # {"epoch": 19}
    """

    def __init__(self, target: Any = None, initial: float = 3.0, final: float = 0.01,
                 anneal_epochs: int = 10) -> None:
        super().__init__()
        if not (initial > 0 and final > 0):
            raise ValueError(f"temperatures must be > 0, got initial={initial}, "
                             f"final={final}.")
        _check_positive_int("anneal_epochs", anneal_epochs)
        self.target = target
        self.initial, self.final, self.anneal_epochs = initial, final, anneal_epochs
        self.epoch = -1  # last schedule epoch set; -1 before the first

    def _variables(self) -> List[tf.Variable]:
        if isinstance(self.target, tf.Variable):
            return [self.target]
        if self.target is not None:
            if not isinstance(getattr(self.target, "temperature", None), tf.Variable):
                raise ValueError(f"TemperatureAnnealing target {self.target!r} has no "
                                 "temperature variable.")
            return [self.target.temperature]
        found = [m.temperature for m in getattr(self.model, "submodules", ())
                 if isinstance(m, ProxySelection)]
        if not found:
            raise ValueError("TemperatureAnnealing found no ProxySelection layer in the "
                             "model; pass target=.")
        return found

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self.epoch = max(int(epoch), self.epoch + 1)
        value = annealed_temperature(self.epoch, self.initial, self.final,
                                     self.anneal_epochs)
        for variable in self._variables():
            variable.assign(value)

    def get_state(self) -> Dict[str, int]:
        """`{"epoch": last annealed schedule epoch}` (JSON-serialisable)."""
        return {"epoch": self.epoch}

    def set_state(self, state: Dict[str, int]) -> None:
        """Restores `get_state()`; the next epoch begin sets epoch `state["epoch"] + 1`."""
        self.epoch = int(state["epoch"])


@tf.keras.utils.register_keras_serializable(package="tfrec_proxy")
class ProxyQueryTower(tf.keras.layers.Layer):
    """The query tower of `--encoder proxysr`: query features -> packed `[B, 2, d]`
    queries of a `ProxySessionEncoder`, scored by the `"proxysr"` scorer (eq. 7).

    It reads `"history"` (and `"user_id"` when the encoder has eq. 10's user bias:
    `--encoder proxysr-user`; unknown or anonymous ids get u = 0, the anonymous
    logits) and trains on per-prefix examples (the proxy of a prefix depends on all
    of its items, so one causal pass cannot give every prefix's query).
    `training_callbacks()` anneals the selection temperature.

    Args:
        encoder: The `ProxySessionEncoder`.

    Example:

        tower = ProxyQueryTower(ProxySessionEncoder(100, 16, num_proxies=8, max_len=10))
        queries = tower({"history": tf.constant([[0, 3, 4]])})  # [1, 2, 16]
    """

    supports_all_positions = False

    def __init__(self, encoder: tf.keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder

    @property
    def user_embedding(self) -> Optional[tf.keras.layers.Layer]:
        """Eq. 10's user bias table (a `UserEmbedding`), or None; its known ids are
        exported as the run's `users.json`."""
        return self.encoder.user_bias

    @property
    def context_specs(self) -> Dict[str, tf.TensorSpec]:
        """`"user_id"` (int64 `[B]`) with eq. 10's user bias, else none."""
        if self.encoder.user_bias is None:
            return {}
        return {USER_ID: tf.TensorSpec([None], tf.int64, name=USER_ID)}

    def call(self, features: Any, training: Optional[bool] = None) -> tf.Tensor:
        """`{"history": [B, L]}` (+ `"user_id": [B]` int64 with eq. 10's bias; a bare
        `[B, L]` tensor without) -> `[B, 2, d]` float32."""
        user_id = None
        if self.encoder.user_bias is not None:
            if not isinstance(features, Mapping) or USER_ID not in features:
                given = sorted(features) if isinstance(features, Mapping) else "a bare history"
                raise KeyError(f"This ProxySR tower has eq. 10's user bias and needs the "
                               f"feature {USER_ID!r}; got {given}.")
            user_id = features[USER_ID]
        return tf.cast(self.encoder(history_of(features), user_id, training=training),
                       tf.float32)

    def training_callbacks(self) -> List[tf.keras.callbacks.Callback]:
        """Callbacks every training phase needs: the temperature annealing (§4.1.4)."""
        return [TemperatureAnnealing(target=self.encoder)]

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config["encoder"] = tf.keras.layers.serialize(self.encoder)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "ProxyQueryTower":
        config = dict(config)
        config["encoder"] = tf.keras.layers.deserialize(config["encoder"])
        return cls(**config)


@ENCODERS.register("proxysr", query_tower=True, scorer="proxysr", unit_ball_items=True)
def build_proxysr_tower(config: Any, context: Any,
                        item_encoder: Optional[tf.keras.layers.Layer]) -> ProxyQueryTower:
    """`"proxysr"`: a whole query tower (no extraction): `ModelConfig.num_proxies`
    proxies, the item table kept in the unit ball (own, or the `"shared"` item tower's
    via `unit_ball_items`; an id/PIR item tower is not constrained: eq. 7's ANN probe
    then needs longer candidate lists)."""
    return _proxysr_tower(config, context, item_encoder, user_ids=None)


@ENCODERS.register("proxysr-user", query_tower=True, scorer="proxysr", user_embedding=True,
                   unit_ball_items=True)
def build_proxysr_user_tower(config: Any, context: Any,
                             item_encoder: Optional[tf.keras.layers.Layer]
                             ) -> ProxyQueryTower:
    """`"proxysr-user"`: `"proxysr"` plus eq. 10's bias u on the selection logits for
    the training examples' known users (`BuildContext.user_ids`; the session task
    gives each session's user); others (new, anonymous: -1) get u = 0."""
    if context.user_ids is None:
        raise ValueError("--encoder proxysr-user needs the training users' ids "
                         "(BuildContext.user_ids).")
    return _proxysr_tower(config, context, item_encoder, user_ids=context.user_ids)


def _proxysr_tower(config: Any, context: Any, item_encoder: Optional[tf.keras.layers.Layer],
                   user_ids: Optional[Sequence[int]]) -> ProxyQueryTower:
    encoder = ProxySessionEncoder(context.vocab_size, config.embedding_dim,
                                  num_proxies=config.num_proxies, max_len=context.max_len,
                                  item_encoder=item_encoder,
                                  lambda_orthog=config.lambda_orthog, user_ids=user_ids,
                                  name="encoder")
    return ProxyQueryTower(encoder, name="query_tower")
