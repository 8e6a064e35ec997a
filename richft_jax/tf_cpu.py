"""Keeps TensorFlow on the CPU so that JAX owns every accelerator.

TensorFlow is only used for tf.data, TFDS and summaries. If it sees the GPUs it
grabs their memory and, imported through clu's writers, can break multi-GPU JAX
collectives; so every module that imports TensorFlow goes through `tf()` here.
XLA_FLAGS is JAX's too: TensorFlow's own XLA is kept from reading it (`xla_flags_for_jax_only`).
"""

import functools
import os
import threading


@functools.cache
def tf():
    """Imports TensorFlow with GPUs and TPUs hidden from it, and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf_module  # noqa: PLC0415  (deliberately late import)

    for kind in ("GPU", "TPU"):
        try:
            tf_module.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # Already initialised or no such device type: nothing of that kind to hide.
            pass
    return tf_module


def data_options(**threading_fields):
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
