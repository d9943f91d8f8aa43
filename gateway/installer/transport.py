"""How the installer's tools run code on a device: a raw-REPL-like transport.

``Transport`` is three operations: run MicroPython code and return what it
printed, put a file, get a file. ``MpremoteTransport`` does them on a real
board with mpremote (each its own mpremote call, with a timeout of ours:
mpremote waits forever for a silent port). ``hil.mp_session.NodeSession``
does them on MicroPython under Node, where CI runs the same steps against the
bundle and the ATECC608 emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

from gateway.installer import InstallerError

MPREMOTE = [sys.executable, "-m", "mpremote"]


class DeviceError(InstallerError):
    """The code raised on the device; ``traceback`` is MicroPython's text."""

    def __init__(self, message: str, reason: str = "device_error", traceback: str = "") -> None:
        super().__init__(message, reason)
        self.traceback = traceback


class PortError(InstallerError):
    pass


class Transport(Protocol):
    def exec(self, code: str, timeout: float = 60.0) -> str: ...
    def put(self, path: str, data: bytes) -> None: ...
    def get(self, path: str) -> bytes: ...
    def put_tree(self, root: Path, names: list[str]) -> None:
        """Copy ``names`` (files or folders) of ``root`` to the device's ``/``."""
        ...
    def reset(self) -> None:
        """Hard reset; returns once the REPL answers again."""
        ...


def wait_for_repl(t: Transport, timeout: float) -> None:
    """Poll with a no-op until the board's REPL answers (a board boots in 1-3 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            t.exec("pass", timeout=max(2.0, min(10.0, deadline - time.monotonic())))
            return
        except PortError:
            if time.monotonic() >= deadline:
                raise


def check_port(port: str) -> None:
    """Refuse a port that does not exist or that we may not open, before any tool runs."""
    if not os.path.exists(port):
        raise PortError(f"no serial port {port}: is the board plugged in? "
                        "Look for it with: ls /dev/serial/by-id/ /dev/ttyUSB* /dev/ttyACM*", "no_port")
    if not os.access(port, os.R_OK | os.W_OK):
        raise PortError(f"permission denied on {port}: add yourself to the dialout group "
                        "(sudo usermod -aG dialout $USER) and log in again", "port_permission")


def classify_mpremote(port: str, text: str) -> InstallerError | None:
    """A specific error for mpremote's known failure texts."""
    if "failed to access" in text:
        if not os.path.exists(port):
            return PortError(f"no serial port {port}: is the board plugged in?", "no_port")
        if not os.access(port, os.R_OK | os.W_OK):
            return PortError(f"permission denied on {port}: add yourself to the dialout group", "port_permission")
        return PortError(f"{port} cannot be opened: another program (a serial console, mpremote repl?) "
                         "may hold it, or you lack permission (dialout group)", "port_busy")
    if "Permission denied" in text:
        return PortError(f"permission denied on {port}: add yourself to the dialout group", "port_permission")
    if "could not enter raw repl" in text:
        return PortError(f"the board on {port} does not give a REPL: is MicroPython flashed? "
                         "Tap EN (reset) and try again", "no_repl")
    return None


class MpremoteTransport:
    """A board on a serial port, through mpremote."""

    def __init__(self, port: str, mpremote: list[str] | None = None, timeout: float = 30.0) -> None:
        self.port = port
        self.mpremote = mpremote or MPREMOTE
        self.timeout = timeout

    def argv(self, *args: str) -> list[str]:
        return [*self.mpremote, "connect", self.port, *args]

    @staticmethod
    def tree_args(root: Path, names: list[str]) -> list[str]:
        """mpremote arguments copying ``names`` of ``root`` (run in ``root``) to ``/``."""
        dirs = [n for n in names if (root / n).is_dir()]
        args = ["cp", "-r", *dirs, ":"] if dirs else []
        for n in names:
            if n not in dirs:
                args += [*(["+"] if args else []), "cp", n, ":" + n]
        return args

    def run(self, *args: str, timeout: float | None = None, cwd: Path | None = None) -> str:
        cmd = self.argv(*args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise PortError(f"no answer from a MicroPython REPL on {self.port} within {timeout or self.timeout:.0f} s: "
                            "is MicroPython flashed, and the board not busy? Tap EN (reset) and try again",
                            "no_repl") from None
        if proc.returncode != 0:
            text = proc.stdout + proc.stderr
            err = classify_mpremote(self.port, text)
            if err is not None:
                raise err
            if "Traceback" in text:
                lines = text.strip().splitlines()
                raise DeviceError(f"the device raised: {lines[-1]}", traceback=text)
            raise InstallerError(f"mpremote failed on {self.port}: {text.strip()[-300:]}", "mpremote")
        return proc.stdout

    def exec(self, code: str, timeout: float = 60.0) -> str:
        return self.run("exec", code, timeout=timeout)

    def put(self, path: str, data: bytes) -> None:
        # Through a private temp file, never on a command line (ps shows those).
        fd, tmp = tempfile.mkstemp(prefix="metanoia-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.run("cp", tmp, ":" + path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_tree(self, root: Path, names: list[str]) -> None:
        self.run(*self.tree_args(root, names), timeout=max(self.timeout, 300.0), cwd=root)

    def reset(self) -> None:
        self.run("reset")
        wait_for_repl(self, self.timeout)

    def get(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "f"
            self.run("cp", ":" + path, str(local))
            return local.read_bytes()
