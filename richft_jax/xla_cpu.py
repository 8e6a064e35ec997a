"""XLA CPU flags that measured faster for this project's train steps, set before JAX starts.

`--xla_cpu_experimental_ynn_fusion_type=` (an empty list: no YNNPACK fusions). With jaxlib
0.10's default YNNPACK fusions, `python -m benchmarks.benchmark --profile=15` put 25 % of the
demo ResNet's train step in `ynn_fusion` ops; without them the same step ran 1.2x faster on the
2-core CPU (1,421 -> 1,711 images/s, batch 128) and the small ViT's was unchanged (README,
"Benchmark"). Entry points call `tune()` before JAX creates its CPU backend (XLA reads
XLA_FLAGS once, then); it only touches the CPU backend's options.

Flags are version-specific (XLA stops at an unknown flag), so they are applied only on the
jaxlib versions they were measured on; a flag already in XLA_FLAGS wins; RICHFT_XLA_CPU_TUNING=0
turns this off.
"""

import os

FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}
MEASURED_ON = ("0.10.",)  # jaxlib version prefixes.


def flags_for(jaxlib_version: str, xla_flags: str, enabled: str = "1") -> str:
    """XLA_FLAGS with this module's flags added (pure: tested without touching the backend)."""
    if enabled == "0" or not jaxlib_version.startswith(MEASURED_ON):
        return xla_flags
    given = {f.split("=")[0] for f in xla_flags.split()}
    extra = [f"{name}={value}" for name, value in FLAGS.items() if name not in given]
    return " ".join([xla_flags.strip(), *extra]).strip()


def tune() -> None:
    """Adds the flags to os.environ["XLA_FLAGS"]; call before the first JAX computation."""
    from jaxlib import version  # noqa: PLC0415 (jaxlib only, no backend started)

    os.environ["XLA_FLAGS"] = flags_for(
        version.__version__,
        os.environ.get("XLA_FLAGS", ""),
        os.environ.get("RICHFT_XLA_CPU_TUNING", "1"),
    )
