"""MQTT brokers for tests, simulation and the demo.

``Mosquitto`` runs the real broker on a random loopback port with a config we
write (persistence on, and no limit that drops QoS 1 messages by design: see
shared NOTES on ``max_queued_messages``). ``EmbeddedBroker`` runs amqtt in a
background thread: the demo's default when Mosquitto is not installed.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    for p in MOSQUITTO_PATHS:
        found = shutil.which(p) or (p if Path(p).is_file() else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"broker did not listen on {host}:{port} within {timeout}s")


class Mosquitto:
    """A real Mosquitto on 127.0.0.1:port; restartable with its persistence kept."""

    def __init__(self, workdir: str | Path | None = None, port: int | None = None, extra_conf: str = "",
                 *, default_listener: bool = True) -> None:
        """``default_listener=False``: no anonymous plain listener of our own; ``extra_conf``
        (e.g. a generated production config) must define the listener on ``port``."""
        exe = find_mosquitto()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="mosq-")
        self.dir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._let_broker_write(self.dir)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            (f"listener {self.port} {self.host}\nallow_anonymous true\n" if default_listener else "")
            + "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            # Mosquitto's default queue limit (1000) silently drops QoS 1 messages
            # for a slow subscriber; bound memory by bytes instead.
            "max_queued_messages 0\n"
            "max_queued_bytes 268435456\n"
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _let_broker_write(path: Path) -> None:
        """Started as root, Mosquitto drops to the ``mosquitto`` user: give it the
        work dir, or it silently writes no persistence file and no log."""
        if os.geteuid() != 0:
            return
        try:
            pw = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EmbeddedBroker:
    """amqtt in a background thread on 127.0.0.1:port (the demo's fallback)."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        try:
            self._broker = Broker(config, loop=loop)
            loop.run_until_complete(self._broker.start())
        except BaseException as e:  # surfaced to the caller of start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def start(self) -> "EmbeddedBroker":
        self._thread = threading.Thread(target=self._run, name="amqtt", daemon=True)
        self._thread.start()
        self._ready.wait(15)
        if self._error:
            raise RuntimeError(f"embedded broker failed: {self._error!r}")
        wait_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self._loop and self._broker:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(10)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_broker(prefer_mosquitto: bool = True) -> Mosquitto | EmbeddedBroker:
    """Mosquitto when installed (and preferred), else the embedded amqtt broker."""
    if prefer_mosquitto and find_mosquitto():
        return Mosquitto().start()
    return EmbeddedBroker().start()
