"""XLA CPU flags that measured faster for this project's train steps, set before JAX starts.

`--xla_cpu_experimental_ynn_fusion_type=` (an empty list: no YNNPACK fusions). With jaxlib
0.10's default YNNPACK fusions, `python -m benchmarks.benchmark --profile=15` put 25 % of the
demo ResNet's train step in `ynn_fusion` ops; without them the same step ran 1.2x faster on the
2-core CPU (1,421 -> 1,711 images/s, batch 128) and the small ViT's was unchanged
(docs/benchmarks.md, "What the profile shows"). Entry points call `tune()` before JAX creates
its CPU backend (XLA reads XLA_FLAGS once, then); it only touches the CPU backend's options.

Simulated devices (`--xla_force_host_platform_device_count=N`, the tests' 8) also get a CPU
thread pool of 2N threads (`NPROC`, which XLA's CPU client reads; one the user set wins): with
the default pool, the full-width demo on 8 simulated devices of a 2-core machine aborted in its
first train steps in 4 of 4 runs (seven devices' all-reduce participants held pool threads
while the eighth's Eigen contraction waited for one; XLA gives up after 40 s), and ran in 4 of
4 with 16 threads, as fast.

Flags are version-specific (XLA stops at an unknown flag), so they are applied only on the
jaxlib versions they were measured on; a flag already in XLA_FLAGS wins; RICHFT_XLA_CPU_TUNING=0
turns this off.
"""

import os
import re
from collections.abc import Mapping

FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}
MEASURED_ON = ("0.10.",)  # jaxlib version prefixes.


def flags_for(jaxlib_version: str, xla_flags: str, enabled: str = "1") -> str:
    """XLA_FLAGS with this module's flags added (pure: tested without touching the backend)."""
    if enabled == "0" or not jaxlib_version.startswith(MEASURED_ON):
        return xla_flags
    given = {f.split("=")[0] for f in xla_flags.split()}
    extra = [f"{name}={value}" for name, value in FLAGS.items() if name not in given]
    return " ".join([xla_flags.strip(), *extra]).strip()


def thread_pool_env(xla_flags: str, environ: Mapping[str, str]) -> dict[str, str]:
    """{"NPROC": 2N} for N > 1 simulated CPU devices unless NPROC or PJRT_NPROC is set (pure)."""
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
    n = int(m[1]) if m else 1
    if n <= 1 or "NPROC" in environ or "PJRT_NPROC" in environ:
        return {}
    return {"NPROC": str(max(2 * n, os.cpu_count() or 1))}


def tune() -> None:
    """Adds the flags to os.environ["XLA_FLAGS"]; call before the first JAX computation."""
    from jaxlib import version  # noqa: PLC0415 (jaxlib only, no backend started)

    os.environ["XLA_FLAGS"] = flags_for(
        version.__version__,
        os.environ.get("XLA_FLAGS", ""),
        os.environ.get("RICHFT_XLA_CPU_TUNING", "1"),
    )
    os.environ.update(thread_pool_env(os.environ["XLA_FLAGS"], os.environ))
