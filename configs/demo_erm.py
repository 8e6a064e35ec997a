"""ERM fine-tuning on the embedded digits domains: `configs/demo.py` with dropout 0.

python -m richft_jax.main --config=configs/demo_erm.py --workdir=/tmp/demo_erm
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    c = config_lib.load_config_file("configs/demo.py", arg)
    c.config_name = "demo_erm"
    c.method = "erm"
    c.dropout_rate = 0.0
    return c
