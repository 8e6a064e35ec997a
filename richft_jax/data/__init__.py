"""Input data: TFDS builders, DomainBed splits and the tf.data input pipeline."""

from richft_jax import tf_cpu

tf_cpu.tf()  # Hide accelerators from TensorFlow before tfds or anything else imports it.
