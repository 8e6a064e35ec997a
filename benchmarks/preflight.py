"""The preflight's benchmark line: the design-card command on a bare machine, timed to its error.

  python -m benchmarks.preflight [--repeat=1] [--out=preflight.json]

Runs `python -m richft_jax.main --config=configs/vit_b16_dropout.py:dataset=pacs,test_domain=0
--workdir=TMP/x` in a subprocess with an empty RICHFT_CACHE, an empty TFDS data dir
(TFDS_DATA_DIR and --config.data.data_dir) and RICHFT_WEIGHTS_MIRROR=http://127.0.0.1:9
(nothing listens there: no real network is tried), and prints one line: the wall seconds until
the command exited, the seconds `import richft_jax.main` alone takes in the same environment
(the process's start-up, which the preflight itself, milliseconds, comes after), whether the
error names both the dataset and the weights, which of TensorFlow, TFDS, JAX, Flax, Orbax and
clu were imported before it stopped (one more run under `python -X importtime`: none, as the
preflight runs first), and the load average (timings on a busy machine are not comparable). A
measurement, not an assertion: the goal is well under 10 s on a 2-core CPU.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from richft_jax.models import hub

DESIGN_CARD = "configs/vit_b16_dropout.py:dataset=pacs,test_domain=0"
DEAD_MIRROR = "http://127.0.0.1:9"  # The discard port: nothing listens, connections refused.
HEAVY = ("tensorflow", "tensorflow_datasets", "jax", "flax", "orbax.checkpoint", "clu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_REPEAT = flags.DEFINE_integer("repeat", 1, "Runs of each command (the fastest is kept).")
_OUT = flags.DEFINE_string("out", None, "Also write the measurement as JSON here.")


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def imported(command: list[str], env: dict) -> list[str]:
    """The modules of HEAVY that `command` imports (run once under `python -X importtime`)."""
    _, done = timed([command[0], "-X", "importtime", *command[1:]], env)
    names = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", done.stderr, re.M))
    return [m for m in HEAVY if m in names]


def measure(repeat: int = 1) -> dict:
    """Seconds to the preflight's error and of the imports alone; what the error names."""
    with tempfile.TemporaryDirectory() as tmp:
        cache, tfds_dir = os.path.join(tmp, "cache"), os.path.join(tmp, "tfds")
        os.makedirs(cache)
        os.makedirs(tfds_dir)
        env = {
            **os.environ,
            "RICHFT_CACHE": cache,
            "TFDS_DATA_DIR": tfds_dir,
            hub.MIRROR_ENV: DEAD_MIRROR,
        }
        command = [
            sys.executable,
            "-m",
            "richft_jax.main",
            f"--config={DESIGN_CARD}",
            f"--workdir={os.path.join(tmp, 'x')}",
            f"--config.data.data_dir={tfds_dir}",
        ]
        runs = [timed(command, env) for _ in range(repeat)]
        seconds, done = min(runs, key=lambda r: r[0])
        imports = min(
            timed([sys.executable, "-c", "import richft_jax.main"], env)[0] for _ in range(repeat)
        )
        heavy = imported(command, env)
        built = sorted(os.listdir(tfds_dir)) + sorted(os.listdir(cache))
    out = done.stdout + done.stderr
    return {
        "command": f"python -m richft_jax.main --config={DESIGN_CARD} --workdir=runs/x",
        "seconds_to_error": round(seconds, 2),
        "seconds_imports_alone": round(imports, 2),
        "exit_code": done.returncode,
        "dataset_named": "dataset 'pacs'" in out and "manual_dir" in out,
        "weights_named": "weights 'vit_b16'" in out and hub.MIRROR_ENV in out,
        "traceback": "Traceback" in out,
        "heavy_imports_before_error": heavy,
        "nothing_built": not built,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def line(m: dict) -> str:
    yes = {True: "yes", False: "NO"}
    return (
        f"preflight: {m['seconds_to_error']:.1f} s to the error (exit {m['exit_code']}; imports "
        f"alone {m['seconds_imports_alone']:.1f} s); dataset named: {yes[m['dataset_named']]}, "
        f"weights named: {yes[m['weights_named']]}, traceback: "
        f"{'YES' if m['traceback'] else 'no'}, nothing built: {yes[m['nothing_built']]}, "
        f"imported first: {', '.join(m['heavy_imports_before_error']) or 'none of TF/JAX'} "
        f"(load average {m['load_average_1min']} on {m['cpus']} CPUs)"
    )


def main(argv: list[str]) -> None:
    del argv
    m = measure(_REPEAT.value)
    print(line(m))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(m, f, indent=1)


if __name__ == "__main__":
    app.run(main)
