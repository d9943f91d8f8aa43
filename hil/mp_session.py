"""A MicroPython session under Node that behaves like a board's raw REPL.

``NodeSession(fs=bundle_fs)`` puts a device file system (e.g. a bundle's
``fs/``) at ``/`` and the ``hil`` folder at ``/hil`` (on ``sys.path``, after
the device's own modules), then answers ``exec``/``put``/``get`` until closed:
the ``Transport`` of ``gateway.installer.transport``. State (files, objects
such as an emulated ATECC608) lives for the session, so a test can provision
a device and then sign with it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from pathlib import Path

from gateway.installer.transport import DeviceError
from hil.micropython_node import HIL, ROOT, MicroPythonUnavailable, available

RUNNER = HIL / "mp_session.mjs"


class NodeSession:
    def __init__(self, fs: Path | None = None, *, heap: int = 16 * 1024 * 1024, firmware_src: bool = False,
                 lib: Path | None = None) -> None:
        if not available():
            raise MicroPythonUnavailable("node and npm package @micropython/micropython-webassembly-pyscript are required")
        dirs = {"/hil": str(HIL)}
        if fs is not None:
            dirs["/"] = str(Path(fs).resolve())
        path = ["/hil"]
        if lib is not None:  # the board's own modules (machine, ...), as a port's built-ins
            dirs["/board"] = str(Path(lib).resolve())
            path.insert(0, "/board")
        if firmware_src:
            dirs["/fw"] = str(ROOT / "firmware")
            path.insert(0, "/fw")
        self._lock = threading.Lock()  # one request at a time: a test may peek while a pty board serves
        self._proc = subprocess.Popen(["node", str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
        self._send({"dirs": dirs, "path": path, "cwd": "/", "heap": heap})
        self._recv()

    def _send(self, obj: dict[str, object]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(obj) + "\n")
        self._proc.stdin.flush()

    def _recv(self) -> dict[str, object]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise DeviceError(f"the MicroPython session ended: {err.strip()[-300:]}", "no_repl")
        reply: dict[str, object] = json.loads(line)
        if not reply.get("ok"):
            tb = str(reply.get("error", ""))
            last = tb.strip().splitlines()[-1] if tb.strip() else "error"
            raise DeviceError(f"the device raised: {last}", traceback=str(reply.get("out", "")) + "\n" + tb)
        return reply

    def _call(self, req: dict[str, object]) -> dict[str, object]:
        with self._lock:
            self._send(req)
            return self._recv()

    def exec(self, code: str, timeout: float = 60.0) -> str:
        return str(self._call({"op": "exec", "code": code})["out"])

    def exec_raw(self, code: str) -> tuple[str, str]:
        """(stdout, traceback) without raising: what a raw REPL sends back."""
        with self._lock:
            self._send({"op": "exec", "code": code})
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
        if not line:
            raise DeviceError("the MicroPython session ended", "no_repl")
        reply = json.loads(line)
        return str(reply.get("out", "")), "" if reply.get("ok") else str(reply.get("error", ""))

    def put(self, path: str, data: bytes) -> None:
        self._call({"op": "put", "path": path, "b64": base64.b64encode(data).decode()})

    def reset(self) -> None:
        """Nothing to do: the session runs no main.py, so there is no loop to stop."""

    def put_tree(self, root: Path, names: list[str]) -> None:
        for n in names:
            p = root / n
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                self.put("/" + f.relative_to(root).as_posix(), f.read_bytes())

    def get(self, path: str) -> bytes:
        return base64.b64decode(str(self._call({"op": "get", "path": path})["b64"]))

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> NodeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
