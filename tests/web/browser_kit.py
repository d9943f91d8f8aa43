"""What the browser tests run against: the real gateway processes and headless Chromium.

- ``Gateway``: ``metanoia gateway web serve`` (uvicorn) and ``metanoia gateway run``
  (the ingest) as subprocesses on one database, a Mosquitto from ``hil.broker``.
- ``Meter``: a signing device (``bench.signed_readings``) publishing a reading
  every half second over MQTT, as the firmware does.
- Screenshots go to ``$METANOIA_SCREENSHOTS`` (default: the test's tmp folder);
  ``METANOIA_SCREENSHOTS=docs/img`` refreshes the guides' pictures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho

from bench.signed_readings import SigningDevice
from hil.broker import Mosquitto, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
GRID = "demo"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def wait_until(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` (an upper bound for a loaded machine, not a budget)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


def publish_meter_step(pub: paho.Client, grid: str, devices: dict[str, SigningDevice], physics: dict, seq: int,
                       now: int) -> None:
    """One signed reading per meter at simulated time ``now``: each household's physics moves
    on, its device signs the counters, and the broker acknowledges the QoS 1 publish."""
    for h, sd in devices.items():
        ph = physics[h]
        ph.advance(now)
        c = ph.snapshot()
        msg = sd.reading(seq, now, round(c["import_wh"]), round(c["export_wh"]), round(c["pv_wh"]), round(c["grid_w"]))
        pub.publish(f"metanoia/{grid}/{sd.device_id.hex()}/tele", msg, qos=1).wait_for_publish(10)


def screenshot_dir(tmp: Path) -> Path:
    d = Path(os.environ.get("METANOIA_SCREENSHOTS") or tmp / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, **(env or {})})


@dataclass
class Gateway:
    workdir: Path
    broker: Mosquitto
    extra_web_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.workdir / "gateway.db"

    def start(self) -> Gateway:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **self.env}
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "web", "serve", "--db", str(self.db), "--grid", GRID,
             "--listen", f"127.0.0.1:{self.port}", "--insecure-cookie", *self.extra_web_args],
            cwd=ROOT, env=env, stdout=open(logs / "web.out", "wb"), stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "run", "--db", str(self.db), "--grid", GRID,
             "--broker", f"{self.broker.host}:{self.broker.port}", "--workers", "0"],
            cwd=ROOT, env=env, stdout=open(logs / "ingest.out", "wb"), stderr=subprocess.STDOUT))
        wait_port("127.0.0.1", self.port, timeout=60)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Meter:
    """A signing device publishing a reading every ``every`` seconds until ``stop``."""

    def __init__(self, broker: Mosquitto, device: SigningDevice, every: float = 0.5) -> None:
        self.device = device
        self.every = every
        self.seq = 0
        self._stop = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"meter-{device.device_id.hex()}")
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Meter:
        self._t.start()
        return self

    def _run(self) -> None:
        topic = f"metanoia/{GRID}/{self.device.device_id.hex()}/tele"
        while not self._stop.is_set():
            self.seq += 1
            power = 800 + 37 * (self.seq % 11) - 1500 * (self.seq % 4 == 0)
            msg = self.device.reading(self.seq, int(time.time()), import_wh=120_000 + 3 * self.seq,
                                      export_wh=40_000 + self.seq, pv_wh=90_000 + 2 * self.seq, power_w=power)
            self.c.publish(topic, msg, qos=1)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.c.disconnect()
        self.c.loop_stop()
