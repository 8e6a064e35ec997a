"""One run per workdir on an object store: a lease object with a heartbeat.

A bucket has no file locks, so the run holding a gs:// workdir writes workdir/.lease.json
(its host, pid, a random id, start time and heartbeat) and a daemon thread refreshes the
heartbeat every `INTERVAL_S`. Another run refuses the workdir while the heartbeat is fresh and
takes it over once it is `STALE_AFTER_S` old (its holder died without releasing it), or at
once when the holder ran on this host and its process is gone (a killed run's rerun).

Best effort: without generation preconditions, two runs starting within the same moment can
both write the lease. Each reads its lease back after `SETTLE_S` and refuses if another id is
there, and the heartbeat never overwrites another run's lease, which narrows the window to runs
starting within about a second of each other, but does not close it. Ages come from the
holder's clock: hosts whose clocks differ by more than STALE_AFTER_S - INTERVAL_S can misjudge.
Works on any epath (a local folder too, which is how it is tested); imports nothing heavy.
"""

import dataclasses
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

from richft_jax import paths

LEASE = ".lease.json"
INTERVAL_S = 30.0  # How often the holder refreshes its heartbeat.
STALE_AFTER_S = 3 * INTERVAL_S  # A heartbeat this old is a dead run's: taken over.
SETTLE_S = 1.0  # Wait before reading the written lease back (a simultaneous writer shows).


class WorkdirInUse(RuntimeError):
    """A second run on a workdir that a live run holds (its message says who and what to do)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease: the run's host, pid, random id, start and last heartbeat (epoch s)."""

    host: str
    pid: int
    id: str
    started: float
    heartbeat: float

    def age(self, now: float) -> float:
        """Seconds since the last heartbeat (0 when the holder's clock runs ahead)."""
        return max(0.0, now - self.heartbeat)

    def gone(self) -> bool:
        """Whether the holder ran on this host and its process no longer exists."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # It exists (another user's process).
            return False
        return False

    def describe(self, now: float) -> str:
        """`host h, pid 12, last heartbeat 4 s ago` for messages."""
        return f"host {self.host}, pid {self.pid}, last heartbeat {self.age(now):.0f} s ago"


def read(lease: epath.Path) -> Holder | None:
    """The lease's holder, or None when there is no lease (an unreadable one counts as none:
    a lease is written in one piece, so it is a foreign file, and taking over is safe)."""
    try:
        fields = json.loads(lease.read_text(encoding="utf-8"))
        return Holder(**{f.name: fields[f.name] for f in dataclasses.fields(Holder)})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logging.warning("%s is not a lease this code wrote: taken over.", lease)
        return None


def _write(lease: epath.Path, holder: Holder) -> None:
    """Writes the lease in one piece."""
    paths.write_text_atomic(lease, json.dumps(dataclasses.asdict(holder), sort_keys=True) + "\n")


def in_use_error(lease: epath.Path, holder: Holder, now: float, stale_after: float) -> str:
    """The refusal: the workdir, who holds it, and the ways out."""
    delete = f"gcloud storage rm {lease}" if paths.is_remote(lease) else f"rm {lease}"
    return (
        f"workdir {str(lease.parent)!r} is in use by another run ({holder.describe(now)}; "
        f"its lease is {lease}). Wait for it to finish, choose another --workdir, or, if you "
        f"know that run is dead, delete the lease ({delete}); a lease without a heartbeat for "
        f"{stale_after:.0f} s is taken over by the next run."
    )


class Lease:
    """A held lease: `acquire` takes it, `release` (or the context manager) gives it back."""

    def __init__(
        self,
        lease: epath.Path,
        interval: float | None = None,
        stale_after: float | None = None,
        settle: float | None = None,
    ):
        """The lease object `lease`; timings default to the module constants (read now)."""
        self.path = lease
        self.interval = INTERVAL_S if interval is None else interval
        self.stale_after = STALE_AFTER_S if stale_after is None else stale_after
        self.settle = SETTLE_S if settle is None else settle
        self.holder: Holder | None = None
        self.lost = threading.Event()  # Set when another run's id replaced ours.
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "Lease":
        """Takes the lease: refused while another run's heartbeat is fresh and its process may
        be alive, taken over (with a warning naming the old holder) once stale or when its
        process on this host is gone; read back after `settle` seconds."""
        now = time.time()
        current = read(self.path)
        if current is not None and current.age(now) < self.stale_after and not current.gone():
            raise WorkdirInUse(in_use_error(self.path, current, now, self.stale_after))
        if current is not None:
            why = "whose process is gone" if current.gone() else "that stopped heartbeating"
            logging.warning(
                "Taking over %s from a run %s (%s).", self.path, why, current.describe(now)
            )
        mine = Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now)
        _write(self.path, mine)
        time.sleep(self.settle)
        found = read(self.path)
        if found is None or found.id != mine.id:
            other = found or current
            raise WorkdirInUse(
                in_use_error(self.path, other, time.time(), self.stale_after)
                if other
                else f"lease {self.path} vanished right after it was written: another run is "
                "starting on this workdir; choose another --workdir or retry."
            )
        self.holder = mine
        self._thread = threading.Thread(target=self._beat, name="workdir-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        """Refreshes the heartbeat every interval until released; stops (and sets `lost`)
        rather than overwrite another run's lease."""
        while not self._stop.wait(self.interval):
            try:
                found = read(self.path)
                if found is not None and found.id != self.holder.id:
                    logging.error(
                        "Lost the workdir lease %s to another run (%s): two runs now write "
                        "this workdir.",
                        self.path,
                        found.describe(time.time()),
                    )
                    self.lost.set()
                    return
                self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
                _write(self.path, self.holder)
            except Exception as e:  # noqa: BLE001 (any backend's network error: retried)
                logging.warning("Could not refresh the workdir lease %s: %s", self.path, e)

    def release(self) -> None:
        """Stops the heartbeat and deletes the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.holder is None:
            return
        try:
            found = read(self.path)
            if found is not None and found.id == self.holder.id:
                self.path.unlink()
        except Exception as e:  # noqa: BLE001 (the run is over: say so, do not mask its end)
            logging.warning("Could not delete the workdir lease %s: %s", self.path, e)
        self.holder = None

    def __enter__(self) -> "Lease":
        return self if self.holder is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
