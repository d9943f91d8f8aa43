"""Run firmware code on real MicroPython (the WebAssembly port under Node).

The firmware tree is copied into MicroPython's filesystem at ``/fw`` (as it
would sit on an ESP32's flash) and put on ``sys.path``; the ``hil`` folder is
at ``/hil`` for emulators that must run beside the firmware (the ATECC608
emulator, the NOR flash model). Tests and ``metanoia bench firmware`` use it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
HIL = ROOT / "hil"
RUNNER = HIL / "mp_node.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


class MicroPythonUnavailable(RuntimeError):
    """Node or the MicroPython npm package is missing (run the set-up)."""


class MicroPythonError(RuntimeError):
    """The code raised on MicroPython; ``traceback`` holds MicroPython's text."""

    def __init__(self, traceback: str, stdout: str) -> None:
        super().__init__(traceback.strip().splitlines()[-1] if traceback.strip() else "MicroPython failed")
        self.traceback = traceback
        self.stdout = stdout


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def last_json(self) -> object:
        """The last stdout line parsed as JSON (the convention for results)."""
        return json.loads(self.lines()[-1])


def available() -> bool:
    return shutil.which("node") is not None and PACKAGE.is_dir()


def run(code: str, *, heap: int = 4 * 1024 * 1024, files: dict[str, str] | None = None,
        timeout: float = 120.0) -> Result:
    """Run ``code`` on MicroPython with the firmware and hil trees mounted.

    ``files`` maps extra MicroPython paths to text contents (e.g. a config).
    Raises MicroPythonError with MicroPython's traceback if the code raises.
    """
    if not available():
        raise MicroPythonUnavailable("node and npm package @micropython/micropython-webassembly-pyscript are required")
    req = {
        "dirs": {"/fw": str(FIRMWARE), "/hil": str(HIL)},
        "path": ["/hil", "/fw"],
        "files": files or {},
        "code": code,
        "heap": heap,
    }
    proc = subprocess.run(["node", str(RUNNER)], input=json.dumps(req), capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    if proc.returncode != 0:
        raise MicroPythonError(proc.stderr, proc.stdout)
    return Result(proc.stdout, proc.stderr)
