"""The virtual Modbus rig: simulated meters and inverters that the firmware reads for real.

Each household gets an Eastron grid meter (SDM630 or SDM120, a pymodbus RTU
slave on a pseudo-terminal pair, see ``hil.pty_link``) or a SunSpec meter over
TCP, and, if it has PV, a SunSpec inverter (models 1 + 103) on a pymodbus TCP
server at 127.0.0.1 on a free port. Every register read asks the physics model
(``hil.physics``) for the household's state at ``clock.now()``, so the
counters move like real ones under accelerated time.

API::

    from hil.modbus_rig import VirtualRig, RigHousehold
    from hil.physics import Household, SimClock

    with VirtualRig([Household("h1", kwp=5, seed=1), RigHousehold(Household("h2", kwp=0, seed=2), meter="sdm120")],
                    clock=SimClock(speed=60)) as rig:
        ep = rig.endpoints["h1"]
        ep.meter_port        # "/dev/pts/N": machine.attach_uart(2, ep.meter_port)
        ep.meter_profile     # "sdm630" / "sdm120" / "sunspec"
        ep.meter_unit        # slave id on that line
        ep.meter_tcp         # (host, port) when meter="sunspec", else None
        ep.inverter_tcp      # (host, port) of the SunSpec inverter, None without PV
        ep.link              # PtyLink: .drop / .corrupt_frames / .noise faults
        ep.meter_sim, ep.inverter_sim   # .fault = ExcCodes.X, .requests, .household

    port, stop = start_eastron_rtu(Household("h", seed=1), model="sdm630", unit=1)
    (host, tcp_port), stop = start_sunspec_tcp(Household("h", seed=1), base=40000)

``RigHousehold(household, meter="sdm630", unit=1, inverter=None, sunspec_base=40000,
pace=True)``: ``inverter`` defaults to "has PV" (kwp > 0). ``pace`` releases the
RTU bytes at the line's character rate. The rig's servers run on one asyncio
loop in a background thread; ``stop()`` (or leaving the ``with``) shuts them down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from hil.physics import Household, SimClock
from hil.pty_link import PtyLink
from hil.sdm_sim import MODELS, EastronSim
from hil.sunspec_sim import SunSpecSim

log = logging.getLogger(__name__)


@dataclass
class RigHousehold:
    household: Household
    meter: str = "sdm630"
    unit: int = 1
    inverter: bool | None = None
    sunspec_base: int = 40000
    pace: bool = True


@dataclass
class Endpoints:
    name: str
    meter_profile: str
    meter_unit: int
    meter_sim: Any
    meter_port: str | None = None
    meter_tcp: tuple[str, int] | None = None
    inverter_tcp: tuple[str, int] | None = None
    inverter_sim: SunSpecSim | None = None
    link: PtyLink | None = None
    servers: list[Any] = field(default_factory=list, repr=False)


class _Loop:
    """An asyncio loop in a daemon thread, for the pymodbus servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="modbus-rig", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


async def _serve_rtu(sim: EastronSim, link: PtyLink) -> ModbusSerialServer:
    server = ModbusSerialServer([sim.device()], port=link.slave_port,
                                baudrate=MODELS[sim.model]["baudrate"], parity="N", stopbits=1,
                                bytesize=8, timeout=1, ignore_missing_devices=True)
    await server.serve_forever(background=True)
    return server


async def _serve_tcp(sim: SunSpecSim) -> tuple[ModbusTcpServer, tuple[str, int]]:
    server = ModbusTcpServer([sim.device()], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    return server, ("127.0.0.1", port)


class VirtualRig:
    def __init__(self, households: list[Household | RigHousehold], clock=None) -> None:
        self.clock = clock or SimClock()
        self.specs = [h if isinstance(h, RigHousehold) else RigHousehold(h) for h in households]
        self.endpoints: dict[str, Endpoints] = {}
        self._loop: _Loop | None = None

    def start(self) -> VirtualRig:
        self._loop = _Loop()
        try:
            for spec in self.specs:
                self.endpoints[spec.household.name] = self._start_one(spec)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, spec: RigHousehold) -> Endpoints:
        h = spec.household
        assert self._loop is not None
        if spec.meter in MODELS:
            link = PtyLink(pace=spec.pace)
            link.units = {spec.unit}
            sim: Any = EastronSim(h, self.clock, spec.meter, spec.unit)
            ep = Endpoints(h.name, spec.meter, spec.unit, sim, meter_port=link.device_port, link=link)
            ep.servers.append(self._loop.run(_serve_rtu(sim, link)))
        elif spec.meter == "sunspec":
            sim = SunSpecSim(h, self.clock, spec.unit, spec.sunspec_base, with_meter=True, inverter=False,
                             serial=f"MTR{h.seed:06d}")
            server, addr = self._loop.run(_serve_tcp(sim))
            ep = Endpoints(h.name, "sunspec", spec.unit, sim, meter_tcp=addr, servers=[server])
        else:
            raise ValueError(f"unknown meter {spec.meter!r} (sdm630, sdm120 or sunspec)")
        if spec.inverter if spec.inverter is not None else h.kwp > 0:
            inv = SunSpecSim(h, self.clock, 1, spec.sunspec_base)
            server, addr = self._loop.run(_serve_tcp(inv))
            ep.inverter_sim, ep.inverter_tcp = inv, addr
            ep.servers.append(server)
        log.info("rig %s: meter %s %s, inverter %s", h.name, spec.meter, ep.meter_port or ep.meter_tcp,
                 ep.inverter_tcp)
        return ep

    def stop(self) -> None:
        if self._loop is None:
            return
        for ep in self.endpoints.values():
            for server in ep.servers:
                try:
                    self._loop.run(server.shutdown(), timeout=5)
                except Exception:  # noqa: BLE001 - best effort while tearing down
                    log.exception("rig: shutting down a server of %s", ep.name)
            if ep.link is not None:
                ep.link.close()
        self._loop.close()
        self._loop = None

    def __enter__(self) -> VirtualRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_eastron_rtu(household: Household, model: str = "sdm630", unit: int = 1, clock=None,
                      pace: bool = True) -> tuple[str, Callable[[], None], Endpoints]:
    """One Eastron meter on a pty: (device port path, stop function, endpoints)."""
    rig = VirtualRig([RigHousehold(household, meter=model, unit=unit, inverter=False, pace=pace)], clock).start()
    ep = rig.endpoints[household.name]
    assert ep.meter_port is not None
    return ep.meter_port, rig.stop, ep


def start_sunspec_tcp(household: Household, base: int = 40000, unit: int = 1, clock=None,
                      with_meter: bool = False, scale: dict[str, int] | None = None
                      ) -> tuple[tuple[str, int], Callable[[], None], SunSpecSim]:
    """One SunSpec inverter (1 + 103, + 203 with ``with_meter``) over TCP: ((host, port), stop, sim)."""
    loop = _Loop()
    sim = SunSpecSim(household, clock or SimClock(), unit, base, with_meter=with_meter, scale=scale)
    try:
        server, addr = loop.run(_serve_tcp(sim))
    except BaseException:
        loop.close()
        raise

    def stop() -> None:
        try:
            loop.run(server.shutdown(), timeout=5)
        finally:
            loop.close()

    return addr, stop, sim
