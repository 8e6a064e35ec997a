"""A long download draws a progress bar on a terminal (bytes done of Content-Length), and none
when stderr is not a terminal (a log file gets the periodic log line instead)."""

import hashlib
import io
import sys

from local_http import LocalServer

from richft_jax.models import hub


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(tmp_path, monkeypatch):
    data = bytes(range(256)) * 4096  # 1 MiB.
    server = LocalServer({"/w.npz": data})
    try:
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        digest = hub.download_file(f"{server.url}/w.npz", tmp_path / "w.npz", "w")
        assert digest == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "w.npz").read_bytes() == data
        drawn = terminal.getvalue()
        assert "w.npz" in drawn and "100%" in drawn and "1.00M" in drawn

        piped = io.StringIO()  # Not a terminal: no bar.
        monkeypatch.setattr(sys, "stderr", piped)
        hub.download_file(f"{server.url}/w.npz", tmp_path / "v.npz", "w")
        assert "100%" not in piped.getvalue()
    finally:
        server.close()
