"""richft_jax: fine-tuning pretrained vision models with very large feature dropout, in JAX."""

__version__ = "0.1.0"
