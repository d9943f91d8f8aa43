"""Eastron SDM630 / SDM120 register images and pymodbus devices fed by the physics model.

The addresses here are typed from Eastron's protocol manuals independently of
``firmware/meter_driver/profiles``, so the rig checks the profiles rather than
echoing them. Values are big-endian float32 input registers (function 0x04);
a few holding registers (function 0x03) hold configuration, like the real
meter. Like the real meter, a request for more than ``max_regs`` registers is
refused (exception 3, ILLEGAL DATA VALUE): that is what proves the driver splits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.physics import Household, _noise

# Input register offsets (30001-based register numbers minus 30001).
SDM630_MAP = {
    "v_l1": 0x00, "v_l2": 0x02, "v_l3": 0x04, "i_l1": 0x06, "i_l2": 0x08, "i_l3": 0x0A,
    "p_l1": 0x0C, "p_l2": 0x0E, "p_l3": 0x10, "i_sum": 0x30, "p_total": 0x34, "pf_total": 0x3E,
    "freq": 0x46, "import_kwh": 0x48, "export_kwh": 0x4A, "total_kwh": 0x156,
}
SDM120_MAP = {
    "v": 0x00, "i": 0x06, "p": 0x0C, "va": 0x12, "var": 0x18, "pf": 0x1E, "freq": 0x46,
    "import_kwh": 0x48, "export_kwh": 0x4A, "total_kwh": 0x156,
}
INPUT_REGS = 0x180          # 30001..30384 answer; beyond is ILLEGAL DATA ADDRESS
MODELS = {"sdm630": {"map": SDM630_MAP, "baudrate": 9600, "max_regs": 60},
          "sdm120": {"map": SDM120_MAP, "baudrate": 2400, "max_regs": 60}}


def _f32(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


def eastron_values(model: str, snap: dict[str, float], t: float, seed: int) -> dict[str, float]:
    """Physical quantities an Eastron meter would show for a household snapshot."""
    grid = snap["grid_w"]
    v = 230.0 + 4.0 * (_noise(seed, int(t // 30)) - 0.5)
    freq = 50.0 + 0.1 * (_noise(seed + 1, int(t // 10)) - 0.5)
    imp, exp = snap["import_wh"] / 1000.0, snap["export_wh"] / 1000.0
    if model == "sdm120":
        i = abs(grid) / v
        return {"v": v, "i": i, "p": grid, "va": v * i, "var": 0.1 * v * i, "pf": 0.99 if grid >= 0 else -0.99,
                "freq": freq, "import_kwh": imp, "export_kwh": exp, "total_kwh": imp + exp}
    p = grid / 3.0
    out = {"p_total": grid, "pf_total": 0.98, "freq": freq, "import_kwh": imp, "export_kwh": exp,
           "total_kwh": imp + exp}
    isum = 0.0
    for ph in ("l1", "l2", "l3"):
        out["v_" + ph] = v
        out["p_" + ph] = p
        out["i_" + ph] = abs(p) / v
        isum += abs(p) / v
    out["i_sum"] = isum
    return out


class EastronSim:
    """One Eastron meter on a bus: a pymodbus ``SimDevice`` that reads the model at access time."""

    def __init__(self, household: Household, clock, model: str = "sdm630", unit: int = 1,
                 max_regs: int | None = None) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown Eastron model {model!r}")
        self.household = household
        self.clock = clock
        self.model = model
        self.unit = unit
        self.max_regs = max_regs or MODELS[model]["max_regs"]
        self.fault: ExcCodes | None = None     # answer every read with this exception
        self.requests: list[tuple[int, int, int]] = []
        self.refused = 0
        self.on_request: Callable[[int, int, int], None] | None = None

    def registers(self) -> dict[int, int]:
        """The current input register image (address -> value)."""
        t = self.clock.now()
        self.household.advance(t)
        vals = eastron_values(self.model, self.household.snapshot(), t, self.household.seed)
        regs: dict[int, int] = {}
        for name, addr in MODELS[self.model]["map"].items():
            regs[addr], regs[addr + 1] = _f32(vals[name])
        return regs

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                      set_values) -> ExcCodes | None:
        self.requests.append((fc, address, count))
        if self.on_request:
            self.on_request(fc, address, count)
        if self.fault is not None:
            return self.fault
        if count > self.max_regs:
            self.refused += 1
            return ExcCodes.ILLEGAL_VALUE
        if fc == 4 and set_values is None:
            for addr, value in self.registers().items():
                if address <= addr < address + count:
                    registers[addr - start] = value
        return None

    def device(self) -> SimDevice:
        hr = [SimData(0x00, count=0x30, values=0, datatype=DataType.REGISTERS)]   # settings block
        ir = [SimData(0x00, count=INPUT_REGS, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        di = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        return SimDevice(self.unit, simdata=(bits, di, hr, ir), action=self._action)
