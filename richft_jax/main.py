"""Entry point: `python -m richft_jax.main --config=configs/demo.py --workdir=DIR`.

Flags only; the work is `train.train_and_evaluate(config, workdir)` (or
`combine.combine_and_evaluate` for `task="combine"`), importable from tests and notebooks. Any
config value can be overridden with `--config.key=value`. Multi-host: `--distributed` calls
`jax.distributed.initialize()`, which detects TPU pods and SLURM by itself; elsewhere give
`--coordinator_address`, `--num_processes` and `--process_id`.

The preflight (every input checked, all problems named at once) runs as soon as the flags are
parsed, before TensorFlow, JAX and the training code are imported (seconds on a small CPU), so
this module imports nothing heavy at the top.
"""

from absl import flags, logging

from richft_jax import cli, config_lib, lease, preflight, tf_cpu, xla_cpu

xla_cpu.tune()  # Before JAX starts its CPU backend (only sets XLA_FLAGS; JAX is not imported).

# A config name from the installed package (demo:tiny) or a file (configs/demo.py:tiny), with
# --config.key=value overrides of the locked config.
_CONFIG = config_lib.define_config_flag(
    "config", "Config: NAME[:arg] (richft_jax/configs) or PATH.py[:arg]."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def check_inputs() -> None:
    """The preflight of the parsed config and workdir, before anything heavy is imported: an
    exit with every problem and its fix (no traceback); then TensorFlow is kept off the
    accelerators before anything imports it. A combine run checks its own list (its runs'
    checkpoints) in combine_and_evaluate."""
    config = _CONFIG.value
    if config.get("task") != "combine":
        try:
            preflight.run(config, _WORKDIR.value)
        except preflight.PreflightError as e:
            raise SystemExit(str(e)) from None
    tf_cpu.tf()


def main(argv: list[str]) -> None:
    del argv
    with cli.importing():  # After the preflight (check_inputs): TensorFlow's and JAX's.
        import jax  # noqa: PLC0415

        from richft_jax import combine, console, timing, train  # noqa: PLC0415

    if _DISTRIBUTED.value or _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
        logging.info(
            "Process %d of %d; %d local / %d global devices.",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
    config = _CONFIG.value
    console.info(
        f"Config {console.config_line(config, _WORKDIR.value)}\n"
        f"  every value: {_WORKDIR.value}/config.json (or --verbose here)."
    )
    if console.verbose():
        logging.info("Config:\n%s", config)
    try:
        if config.get("task") == "combine":
            combine.combine_and_evaluate(config, _WORKDIR.value)
        else:
            # This process was started to run it: its age until now is the run's startup.
            train.train_and_evaluate(config, _WORKDIR.value, startup_s=timing.process_age_s())
    except (preflight.PreflightError, lease.WorkdirInUse) as e:
        # Missing inputs, or a workdir a live run holds: what and the fixes, no traceback.
        raise SystemExit(str(e)) from None


def run() -> None:
    """`python -m richft_jax.main` and the `richft-train` console script."""
    # --config is defined in config_lib, so it is not one of this module's own flags.
    cli.run(main, __name__, __doc__, extra_key_flags=("config",), first=check_inputs)


if __name__ == "__main__":
    run()
