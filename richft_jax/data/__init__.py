"""Input data: TFDS builders, DomainBed splits and the tf.data input pipeline.

Importing the package imports no TensorFlow: catalog.py and domainbed_layout.py (names,
domains, layout checks) are read by the preflight before TensorFlow is. The modules that use
TensorFlow or TFDS call `tf_cpu.tf()` when imported, so TensorFlow never sees the accelerators.
"""
