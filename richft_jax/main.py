"""Entry point: `python -m richft_jax.main --config=configs/demo.py --workdir=DIR`.

Flags only; the work is `train.train_and_evaluate(config, workdir)`, importable from
tests and notebooks. Any config value can be overridden with `--config.key=value`.
"""

from richft_jax import tf_cpu

tf_cpu.tf()  # Before anything else imports TensorFlow: keep it off the accelerators.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from richft_jax import combine, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    logging.info("Config:\n%s", config)
    if config.get("task") == "combine":
        combine.combine_and_evaluate(config, _WORKDIR.value)
    else:
        train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
