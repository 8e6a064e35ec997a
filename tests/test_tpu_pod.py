"""launch/tpu_pod.sh with `gcloud`, `git` and `python3` replaced by recorders: the command every
worker runs passes the gs:// workdir (and every extra flag, quoted) straight to richft_jax.main,
with --distributed, and mounts nothing (no gcsfuse)."""

import os
import pathlib
import shlex
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def recorder(bin_dir: pathlib.Path, name: str, log: pathlib.Path) -> None:
    """An executable `name` that appends "name ARGS" to `log`, one line a call."""
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}\n')
    script.chmod(0o755)


def test_workers_get_the_bucket_workdir_as_is(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    # gcloud: record, and for `ssh ... --command=C` run C as a worker would (in a worker home).
    worker = tmp_path / "worker"
    (worker / "richft_jax").mkdir(parents=True)
    (bin_dir / "gcloud").write_text(
        "#!/bin/bash\n"
        f'echo "gcloud $*" >> {shlex.quote(str(log))}\n'
        'for a in "$@"; do case $a in --command=*) cmd=${a#--command=};; esac; done\n'
        f'[ -n "${{cmd:-}}" ] && cd {shlex.quote(str(worker))} && bash -c "$cmd"\n'
        "exit 0\n"
    )
    (bin_dir / "gcloud").chmod(0o755)
    for name in ("git", "python3", "gcsfuse", "mountpoint"):
        recorder(bin_dir, name, log)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RICHFT_REPO": "https://x/r"}
    env.pop("ACCELERATOR_TYPE", None)
    subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "tpu_pod.sh"),
            "my-tpu",
            "us-central2-b",
            "configs/vit_b16_dropout.py:dataset=pacs,test_domain=0",
            "gs://bkt/runs/x",
            "--config.data.data_dir=gs://bkt/tfds",
            "--config.optim.lr=5e-4",
        ],
        env=env,
        check=True,
        cwd=tmp_path,
    )
    calls = log.read_text().splitlines()
    main = [c for c in calls if c.startswith("python3 -m richft_jax.main")]
    assert main == [
        "python3 -m richft_jax.main --distributed "
        "--config=configs/vit_b16_dropout.py:dataset=pacs,test_domain=0 "
        "--workdir=gs://bkt/runs/x --config.data.data_dir=gs://bkt/tfds --config.optim.lr=5e-4"
    ]
    assert any(c.startswith("gcloud compute tpus tpu-vm ssh my-tpu") for c in calls)
    assert "--worker=all" in calls[0]
    assert not [c for c in calls if c.startswith(("gcsfuse", "mountpoint"))]
    assert not (tmp_path / "gs:").exists() and not (worker / "richft_jax" / "gs:").exists()
