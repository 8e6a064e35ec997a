"""The test suite's time by test file: processes started and JAX compile time (sitecustomize)."""
