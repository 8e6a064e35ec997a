"""One run per workdir on an object store: the heartbeat lease (richft_jax/lease.py), tested
on a local folder in lease mode (the lease takes any epath), and the workdir choosing flock or
lease."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from absl import logging
from etils import epath

from richft_jax import lease as lease_lib
from richft_jax import workdir as workdir_lib


def lease_at(tmp_path, **kw) -> lease_lib.Lease:
    return lease_lib.Lease(epath.Path(tmp_path) / lease_lib.LEASE, **{"settle": 0, **kw})


def write_holder(tmp_path, heartbeat_age: float, **fields) -> lease_lib.Holder:
    now = time.time()
    holder = lease_lib.Holder(
        **{"host": "other-host", "pid": 4242, "id": "abc", "started": now - 100, **fields},
        heartbeat=now - heartbeat_age,
    )
    (tmp_path / lease_lib.LEASE).write_text(json.dumps(dataclasses.asdict(holder)))
    return holder


def test_a_fresh_lease_refuses_a_second_run_naming_holder_and_fixes(tmp_path):
    first = lease_at(tmp_path, interval=60).acquire()
    with pytest.raises(RuntimeError) as err:
        lease_at(tmp_path).acquire()
    message = str(err.value)
    assert f"workdir '{tmp_path}' is in use by another run" in message
    assert f"pid {first.holder.pid}" in message and "last heartbeat 0 s ago" in message
    assert "choose another --workdir" in message and f"(rm {tmp_path / '.lease.json'})" in message
    first.release()


def test_a_stale_lease_is_taken_over_with_a_line_naming_the_old_holder(tmp_path, monkeypatch):
    write_holder(tmp_path, heartbeat_age=10)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    with lease_at(tmp_path, stale_after=5, interval=60) as held:
        on_disk = json.loads((tmp_path / lease_lib.LEASE).read_text())
        assert on_disk["id"] == held.holder.id != "abc"
    assert len(warnings) == 1 and "other-host, pid 4242, last heartbeat 10 s ago" in warnings[0]


def test_a_lease_fresher_than_the_staleness_is_not_taken_over(tmp_path):
    write_holder(tmp_path, heartbeat_age=3)
    with pytest.raises(RuntimeError, match="host other-host, pid 4242, last heartbeat 3 s ago"):
        lease_at(tmp_path, stale_after=5).acquire()
    assert json.loads((tmp_path / lease_lib.LEASE).read_text())["id"] == "abc"  # Untouched.


def test_the_lease_is_deleted_on_exit_even_after_an_error(tmp_path):
    with pytest.raises(KeyError), lease_at(tmp_path, interval=60).acquire():
        assert (tmp_path / lease_lib.LEASE).exists()
        raise KeyError("the run failed")
    assert not (tmp_path / lease_lib.LEASE).exists()
    lease_at(tmp_path).acquire().release()  # The next run takes it at once.


def test_the_heartbeat_advances_while_held(tmp_path):
    with lease_at(tmp_path, interval=0.05) as held:
        started = held.holder.heartbeat
        time.sleep(0.5)
        beat = json.loads((tmp_path / lease_lib.LEASE).read_text())
        assert beat["heartbeat"] > started and beat["started"] == held.holder.started
        assert beat["id"] == held.holder.id


def test_a_run_whose_lease_is_overwritten_right_away_refuses(tmp_path, monkeypatch):
    held = lease_at(tmp_path)
    real_write = lease_lib._write

    def racing_write(path, holder):  # Another run writes its lease just after ours.
        real_write(path, holder)
        real_write(path, dataclasses.replace(holder, id="theirs", host="racer"))

    monkeypatch.setattr(lease_lib, "_write", racing_write)
    with pytest.raises(RuntimeError, match="in use by another run \\(host racer"):
        held.acquire()
    assert held.holder is None


def test_the_heartbeat_never_overwrites_another_runs_lease(tmp_path):
    with lease_at(tmp_path, interval=0.05) as held:
        write_holder(tmp_path, heartbeat_age=0, id="theirs")
        assert held.lost.wait(2)
        time.sleep(0.2)
        assert json.loads((tmp_path / lease_lib.LEASE).read_text())["id"] == "theirs"
    assert (tmp_path / lease_lib.LEASE).exists()  # Not ours to delete.


def test_the_workdir_uses_a_lease_on_a_bucket_and_an_flock_on_a_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_lib, "SETTLE_S", 0.0)
    with workdir_lib.exclusive_workdir(tmp_path, use_lease=True):
        assert (tmp_path / ".lease.json").exists() and not (tmp_path / ".lock").exists()
        with pytest.raises(RuntimeError, match="is in use by another run"):
            with workdir_lib.exclusive_workdir(str(tmp_path), use_lease=True):
                pass
    assert not (tmp_path / ".lease.json").exists()
    with workdir_lib.exclusive_workdir(tmp_path):
        assert (tmp_path / ".lock").exists() and not (tmp_path / ".lease.json").exists()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, monkeypatch):
    """A killed run's rerun on the same host does not wait for the heartbeat to go stale; a
    live process's lease (this test's parent) still refuses."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(done.stdout)
    write_holder(tmp_path, heartbeat_age=1, host=socket.gethostname(), pid=dead)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    with lease_at(tmp_path, stale_after=600, interval=60) as held:
        assert json.loads((tmp_path / lease_lib.LEASE).read_text())["id"] == held.holder.id
    assert (
        len(warnings) == 1
        and f"whose process is gone (host {socket.gethostname()}, pid {dead}" in warnings[0]
    )

    write_holder(tmp_path, heartbeat_age=1, host=socket.gethostname(), pid=os.getppid())
    with pytest.raises(lease_lib.WorkdirInUse, match=f"pid {os.getppid()}"):
        lease_at(tmp_path, stale_after=600).acquire()
