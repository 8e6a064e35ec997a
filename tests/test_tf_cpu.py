"""TensorFlow's one door (richft_jax/tf_cpu.py): a process that imports the training code has
TensorFlow and clu's writers without Keras, and Keras still works on first use: through
`tf.keras`, and TensorBoard's hparams Keras callback is the real one once created."""

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    import richft_jax.train  # TensorFlow and clu's summary writer come with it.
    from richft_jax import tf_cpu
    seen = {"imported": {m: m in sys.modules for m in (
        "tensorflow", "clu.metric_writers", "tensorboard.plugins.hparams.api", "keras",
        "sklearn", tf_cpu.KERAS_BY_TENSORFLOW, tf_cpu.KERAS_BY_HPARAMS)}}
    tf = tf_cpu.tf()
    layer = tf.keras.layers.Dense(3)  # Keras loads now.
    seen["dense"] = layer(tf.zeros([2, 5])).shape.as_list()
    seen["optimizer"] = type(tf.keras.optimizers.SGD(0.1)).__module__
    from tensorboard.plugins.hparams import api as hp
    callback = hp.KerasCallback(sys.argv[1], {"rate": 0.9})
    seen["callback"] = isinstance(callback, tf.keras.callbacks.Callback)
    from tensorboard.plugins.hparams import _keras
    seen["real_module"] = issubclass(_keras.Callback, tf.keras.callbacks.Callback)
    before = dict(sys.modules)
    with tf_cpu._keras_deferred():  # Keras is here now: nothing is deferred any more.
        seen["deferred_again"] = sys.modules.get(tf_cpu.KERAS_BY_TENSORFLOW) is None
    seen["modules_unchanged"] = dict(sys.modules) == before
    print(json.dumps(seen))
    """
)


def test_training_imports_tensorflow_without_keras_and_keras_loads_on_use(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "hparams")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    imported = seen["imported"]
    assert imported["tensorflow"] and imported["clu.metric_writers"], imported
    assert imported["tensorboard.plugins.hparams.api"], imported
    assert not any(imported[m] for m in ("keras", "sklearn")), imported
    # Neither the blocked name nor the stand-in is left behind in sys.modules.
    assert not imported["keras.src.optimizers"], imported
    assert not imported["tensorboard.plugins.hparams._keras"], imported
    assert seen["dense"] == [2, 3]
    assert seen["optimizer"].startswith("keras.")
    assert seen["callback"] and seen["real_module"]
    assert seen["deferred_again"] is False and seen["modules_unchanged"]
