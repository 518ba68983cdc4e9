"""Cross-replica negatives (`tfrec_proxy.cross_replica`): two replicas (logical CPU
devices, in a fresh process) give the loss and gradients of one replica on the
concatenated batch, with logQ and accidental-hit removal; without the option they
do not."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfrec_proxy._tf import tf
from tfrec_proxy.cross_replica import gather_candidates

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tfrec_proxy  # sets TF_USE_LEGACY_KERAS
    from tfrec_proxy._tf import tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfrec_proxy.config import ModelConfig
    from tfrec_proxy.models import build_model

    V, L, B = 40, 6, 9
    rng = np.random.default_rng(0)
    probability = rng.uniform(0.01, 0.2, V).astype(np.float32)
    history = rng.integers(2, V, (B, L)).astype(np.int32)
    history[:, :2] = 0  # left padding
    target = rng.integers(2, V, B).astype(np.int32)
    target[6] = target[1]  # an accidental hit across the two replicas
    target[2] = target[0]  # and one inside replica 0
    split = 5  # uneven: replica 0 holds 5 rows, replica 1 holds 4

    def make(config, strategy=None):
        scope = strategy.scope() if strategy else tf.name_scope("single")
        with scope:
            model = build_model(config, V, L, probability)
            model.compute_loss({"history": tf.constant(history[:2]),
                                "target": tf.constant(target[:2])})
        return model

    def dense(gradient):
        return tf.convert_to_tensor(gradient)

    out = {}
    for kind, extraction in (("sur", "last"), ("mur", "mur")):
        config = ModelConfig(embedding_dim=8, item_hidden_units=(8, 8), num_heads=2,
                             dropout=0.0, history_oov_rate=0.0, extraction=extraction)
        if kind == "mur":
            config.num_interests = 3
        single = make(config)
        with tf.GradientTape() as tape:
            loss = single.compute_loss({"history": tf.constant(history),
                                        "target": tf.constant(target)}, training=True)
        grads = [dense(g) for g in tape.gradient(loss, single.trainable_variables)]
        out[kind] = {"single": [float(loss), [g.numpy().tolist() for g in grads]]}

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        model = make(config, strategy)
        model.set_weights(single.get_weights())
        features = strategy.experimental_distribute_values_from_function(
            lambda ctx: {"history": tf.constant(history[:split] if ctx.replica_id_in_sync_group == 0 else history[split:]),
                         "target": tf.constant(target[:split] if ctx.replica_id_in_sync_group == 0 else target[split:])})

        def step(batch):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(batch, training=True)
            # Keras sums the replicas' gradients; here the sum is taken outside.
            return loss, [dense(g) for g in tape.gradient(loss, model.trainable_variables)]

        for flag in (True, False):
            model.cross_replica_negatives = flag  # read when tracing: a new function
            losses, grads = strategy.run(tf.function(step), args=(features,))
            total = strategy.reduce("sum", losses, axis=None)
            grads = [sum(part.numpy() for part in strategy.experimental_local_results(g))
                     for g in grads]
            out[kind][str(flag)] = [float(total), [g.tolist() for g in grads]]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def replicated():
    child = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["sur", "mur"])
def test_two_replicas_equal_one_replica_on_the_concatenated_batch(replicated, kind):
    single_loss, single_grads = replicated[kind]["single"]
    loss, grads = replicated[kind]["True"]
    np.testing.assert_allclose(loss, single_loss, rtol=1e-5)
    assert len(grads) == len(single_grads)
    for got, want in zip(grads, single_grads):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-6)
    # Without the option each replica sees only its own candidates: another loss.
    local_loss, _ = replicated[kind]["False"]
    assert abs(local_loss - single_loss) > 1e-3 * abs(single_loss)


def test_without_replicas_nothing_changes():
    candidates, ids = tf.random.normal([4, 3]), tf.constant([5, 6, 7, 8])
    got = gather_candidates(candidates, ids, None)
    assert got[0] is candidates and got[1] is ids and got[2] is None
