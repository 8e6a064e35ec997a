"""The experiments' configs, one module per paper row, each with `get_config(arg)`.

Load one by name with `python -m richft_jax.main --config=demo:tiny` (or `configs/demo.py:tiny`
from a clone); in code, `config_lib.load_config_file("demo:tiny")` or import the module and call
its `build(...)` with keyword arguments, as configs built on another config do. `arg` is parsed
by `config_lib.parse_arg`: comma-separated `name=value`, a bare `name` for a bool.
"""
