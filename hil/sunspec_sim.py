"""A SunSpec device image (models 1, 103 and optionally 203) fed by the physics model.

The model layouts come from pysunspec2's model definitions (the SunSpec
Alliance's JSON), not from ``firmware/meter_driver/profiles/sunspec.json``, so
the rig checks the firmware's profile instead of mirroring it. Points we do
not simulate keep their "not implemented" value, as on a real inverter.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from pathlib import Path

import sunspec2
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.physics import Household, _noise

MODEL_DIR = Path(sunspec2.__file__).parent / "models" / "json"
NOT_IMPLEMENTED = {"int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF,
                   "bitfield16": 0xFFFF, "acc16": 0, "int32": 0x80000000, "uint32": 0xFFFFFFFF,
                   "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF, "acc32": 0, "pad": 0x8000,
                   "string": 0, "count": 0}
DEFAULT_SF = {"A_SF": -2, "V_SF": -1, "W_SF": 0, "Hz_SF": -2, "WH_SF": 0, "DCW_SF": 0,
              "PF_SF": -1, "TotWh_SF": 0}


@lru_cache(maxsize=None)
def model_layout(mid: int) -> tuple[int, dict[str, tuple[int, str, int]]]:
    """(body length, {point name: (body offset, type, size)}) from pysunspec2's JSON."""
    spec = json.loads((MODEL_DIR / f"model_{mid}.json").read_text())
    pts: dict[str, tuple[int, str, int]] = {}
    off = 0
    for p in spec["group"]["points"]:
        if p["name"] not in ("ID", "L"):
            pts[p["name"]] = (off, p["type"], int(p["size"]))
            off += int(p["size"])
    return off, pts


class SunSpecImage:
    """Holding registers from ``base``: 'SunS', the models, the 0xFFFF end marker."""

    def __init__(self, models: list[int], base: int = 40000) -> None:
        self.base = base
        self.regs: list[int] = [0x5375, 0x6E53]
        self.where: dict[int, int] = {}         # model id -> index of its body in regs
        for mid in models:
            length, pts = model_layout(mid)
            self.regs += [mid, length]
            self.where[mid] = len(self.regs)
            body = [0] * length
            for off, ptype, size in pts.values():
                fill = NOT_IMPLEMENTED.get(ptype, 0)
                if size == 2:
                    body[off], body[off + 1] = fill >> 16, fill & 0xFFFF
                elif size == 1:
                    body[off] = fill
            self.regs += body
        self.regs += [0xFFFF, 0]

    def set(self, mid: int, name: str, value: int | str | None) -> None:
        off, ptype, size = model_layout(mid)[1][name]
        i = self.where[mid] + off
        if value is None:
            fill = NOT_IMPLEMENTED.get(ptype, 0)
            words = [fill >> 16, fill & 0xFFFF] if size == 2 else [fill] * size
        elif ptype == "string":
            b = str(value).encode()[: 2 * size].ljust(2 * size, b"\0")
            words = list(struct.unpack(f">{size}H", b))
        elif size == 2:
            v = int(value) & 0xFFFFFFFF
            words = [v >> 16, v & 0xFFFF]
        else:
            words = [int(value) & 0xFFFF]
        self.regs[i:i + size] = words


class SunSpecSim:
    """A SunSpec inverter (1 + 103, plus 203 with ``with_meter``) for one household."""

    def __init__(self, household: Household, clock, unit: int = 1, base: int = 40000,
                 with_meter: bool = False, inverter: bool = True, scale: dict[str, int] | None = None,
                 serial: str | None = None) -> None:
        self.household = household
        self.clock = clock
        self.unit = unit
        self.sf = dict(DEFAULT_SF, **(scale or {}))
        models = [1] + ([103] if inverter else []) + ([203] if with_meter else [])
        self.image = SunSpecImage(models, base)
        self.fault: ExcCodes | None = None
        self.requests: list[tuple[int, int, int]] = []
        img = self.image
        img.set(1, "Mn", "Metanoia Sim")
        img.set(1, "Md", "PV-Inverter" if inverter else "Grid-Meter")
        img.set(1, "Vr", "1.0.0")
        img.set(1, "SN", serial or f"SIM{household.seed:06d}")
        img.set(1, "DA", unit)

    def _scaled(self, value: float, sf_name: str) -> int:
        return int(round(value / 10 ** self.sf[sf_name]))

    def refresh(self) -> None:
        t = self.clock.now()
        h = self.household
        h.advance(t)
        snap = h.snapshot()
        img = self.image
        v = 230.0 + 4.0 * (_noise(h.seed, int(t // 30)) - 0.5)
        hz = 60.0 + 0.05 * (_noise(h.seed + 1, int(t // 10)) - 0.5)
        if 103 in img.where:
            for name in ("A_SF", "V_SF", "W_SF", "Hz_SF", "WH_SF", "DCW_SF"):
                img.set(103, name, self.sf[name] & 0xFFFF)
            pv = snap["pv_w"]
            img.set(103, "A", self._scaled(pv / v, "A_SF"))
            img.set(103, "PhVphA", self._scaled(v, "V_SF"))
            img.set(103, "W", self._scaled(pv, "W_SF"))
            img.set(103, "Hz", self._scaled(hz, "Hz_SF"))
            img.set(103, "WH", self._scaled(snap["pv_wh"], "WH_SF"))
            img.set(103, "DCW", self._scaled(pv / 0.97, "DCW_SF"))
            img.set(103, "St", 4 if pv > 0 else 2)          # MPPT / SLEEPING
        if 203 in img.where:
            for name in ("A_SF", "V_SF", "W_SF", "Hz_SF", "PF_SF", "TotWh_SF"):
                img.set(203, name, self.sf[name] & 0xFFFF)
            grid = snap["grid_w"]
            img.set(203, "A", self._scaled(abs(grid) / v, "A_SF"))
            img.set(203, "PhV", self._scaled(v, "V_SF"))
            img.set(203, "PhVphA", self._scaled(v, "V_SF"))
            img.set(203, "Hz", self._scaled(hz, "Hz_SF"))
            img.set(203, "W", self._scaled(grid, "W_SF"))
            img.set(203, "WphA", self._scaled(grid, "W_SF"))
            img.set(203, "PF", self._scaled(98.0, "PF_SF"))
            img.set(203, "TotWhImp", self._scaled(snap["import_wh"], "TotWh_SF"))
            img.set(203, "TotWhExp", self._scaled(snap["export_wh"], "TotWh_SF"))

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                      set_values) -> ExcCodes | None:
        self.requests.append((fc, address, count))
        if self.fault is not None:
            return self.fault
        if set_values is None:
            self.refresh()
            base = self.image.base
            registers[base - start: base - start + len(self.image.regs)] = self.image.regs
        return None

    def device(self) -> SimDevice:
        n = len(self.image.regs)
        block = [SimData(self.image.base, count=n, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(self.unit, simdata=block, action=self._action)
