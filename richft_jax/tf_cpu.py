"""Keeps TensorFlow on the CPU so that JAX owns every accelerator.

TensorFlow is only used for tf.data, TFDS and summaries. If it sees the GPUs it
grabs their memory and, imported through clu's writers, can break multi-GPU JAX
collectives; so every module that imports TensorFlow goes through `tf()` here.
XLA_FLAGS is JAX's too: TensorFlow's own XLA is kept from reading it (`xla_flags_for_jax_only`).
"""

import contextlib
import functools
import importlib
import os
import sys
import threading
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow

# What imports Keras eagerly with TensorFlow, though nothing here uses it: TensorFlow's own
# __init__ (to register Keras optimizers for SavedModels; it skips this module when it cannot
# be imported) and TensorBoard's hparams API, which clu's summary writer imports and whose
# Keras callback subclasses `tf.keras.callbacks.Callback` when its module is imported.
KERAS_BY_TENSORFLOW = "keras.src.optimizers"
KERAS_BY_HPARAMS = "tensorboard.plugins.hparams._keras"


@functools.cache
def tf() -> types.ModuleType:
    """Imports TensorFlow with GPUs and TPUs hidden from it, and returns the module.

    Keras is left to load on first use (`tf.keras`, `import keras`), not with TensorFlow: 1.7 of
    the 4.4 s `import tensorflow, clu.metric_writers` takes on a 2-core CPU (scikit-learn and
    more come with it), in every process that trains or evaluates."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _keras_deferred():
        import tensorflow as tf_module  # noqa: PLC0415  (deliberately late import)

        _import_hparams_api_without_keras()

    for kind in ("GPU", "TPU"):
        try:
            tf_module.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # Already initialised or no such device type: nothing of that kind to hide.
            pass
    return tf_module


def data_options(**threading_fields) -> "tensorflow.data.Options":
    """tf.data options for this project's pipelines: autotuning off (its model thread can hold
    a finished iterator's deletion for up to ~16 s, measured at the end of demo runs); a map
    given `tf.data.AUTOTUNE` then runs with the CPU count's parallelism. `threading_fields` sets
    `options.threading` fields."""
    options = tf().data.Options()
    options.autotune.enabled = False
    for name, value in threading_fields.items():
        setattr(options.threading, name, value)
    return options


_ENVIRON_LOCK = threading.Lock()  # os.environ is the process's: one change at a time.


@functools.cache
def xla_flags_for_jax_only() -> None:
    """Makes TensorFlow's XLA (its `jit_compile=True` functions) read its flags from an empty
    XLA_FLAGS, once per process, before its first compilation: XLA_FLAGS holds flags for JAX's
    XLA, and TensorFlow's older copy aborts the process on one it does not know (each copy
    parses the variable once, at its first use). Its own flags still come from TF_XLA_FLAGS."""
    with _ENVIRON_LOCK:
        saved = os.environ.pop("XLA_FLAGS", None)
        try:
            with tf().init_scope():  # Eagerly, even while a tf.function is being traced.
                tf().function(lambda x: x + 1, jit_compile=True)(tf().constant(0.0))
        finally:
            if saved is not None:
                os.environ["XLA_FLAGS"] = saved


@contextlib.contextmanager
def _keras_deferred():
    """While TensorFlow is imported for the first time in a process without Keras: its eager
    import of KERAS_BY_TENSORFLOW fails (a None entry in sys.modules), which TensorFlow skips;
    afterwards the module imports as usual. A no-op where either is already imported."""
    if "tensorflow" in sys.modules or "keras" in sys.modules:
        yield
        return
    sys.modules[KERAS_BY_TENSORFLOW] = None
    try:
        yield
    finally:
        if KERAS_BY_TENSORFLOW in sys.modules and sys.modules[KERAS_BY_TENSORFLOW] is None:
            del sys.modules[KERAS_BY_TENSORFLOW]


class _HparamsKerasCallback:
    """TensorBoard's `hparams.api.KerasCallback` until first use: creating one imports the real
    callback module (and Keras) and returns its `Callback`."""

    def __new__(cls, *args, **kwargs):
        return importlib.import_module(KERAS_BY_HPARAMS).Callback(*args, **kwargs)


def _import_hparams_api_without_keras() -> None:
    """Imports TensorBoard's hparams API with a stand-in for its Keras callback module, which is
    then dropped again, so the real one imports on a later `import` as usual."""
    api = "tensorboard.plugins.hparams.api"
    if "keras" in sys.modules or api in sys.modules or KERAS_BY_HPARAMS in sys.modules:
        return
    stand_in = types.ModuleType(KERAS_BY_HPARAMS)
    stand_in.Callback = _HparamsKerasCallback
    sys.modules[KERAS_BY_HPARAMS] = stand_in
    try:
        importlib.import_module(api)
    except ImportError:
        pass  # No TensorBoard: clu's summary writer will say so where it needs it.
    finally:
        del sys.modules[KERAS_BY_HPARAMS]
        package = sys.modules.get("tensorboard.plugins.hparams")
        if getattr(package, "_keras", None) is stand_in:
            delattr(package, "_keras")
