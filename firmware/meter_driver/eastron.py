"""Eastron SDM reader: float32 input registers, split at the meter's limit.

Eastron meters answer at most ``bus.max_regs`` registers per request (about
30 float values); asking for more gets an exception, so the profile's points
are grouped into requests no longer than that. Values are big-endian IEEE-754
float32 over two registers; NaN or infinity (an unsupported parameter) becomes
None. ``scale`` converts units (kWh -> Wh), ``int`` rounds to an integer,
``digits`` rounds floats.
"""

import struct

_INF = float("inf")


def plan_blocks(addrs, max_regs, width=2):
    """Group sorted start addresses into (start, count) requests of <= max_regs."""
    blocks = []
    start = end = -1
    for a in addrs:
        if start >= 0 and a + width - start <= max_regs:
            if a + width > end:
                end = a + width
            continue
        if start >= 0:
            blocks.append((start, end - start))
        start = a
        end = a + width
    if start >= 0:
        blocks.append((start, end - start))
    return blocks


class EastronReader:
    def __init__(self, bus, profile, unit=1):
        self.bus = bus
        self.unit = unit
        b = profile["bus"]
        self.function = b.get("function", 4)
        self.max_regs = b["max_regs"]
        pts = sorted(profile["points"], key=lambda p: p["addr"])
        self.blocks = []
        for start, count in plan_blocks([p["addr"] for p in pts], self.max_regs):
            mine = []
            for p in pts:
                if start <= p["addr"] < start + count:
                    mine.append((p["key"], 2 * (p["addr"] - start), p.get("scale", 1),
                                 bool(p.get("int")), p.get("digits", 3)))
            self.blocks.append((start, count, mine))

    def read(self, out):
        """Fill ``out`` with every point of the profile; ModbusError on failure."""
        bus = self.bus
        for start, count, pts in self.blocks:
            data = bus.read_raw(self.unit, self.function, start, count)
            for key, off, scale, as_int, digits in pts:
                v = struct.unpack_from(">f", data, off)[0]
                if v != v or v == _INF or v == -_INF:
                    out[key] = None
                elif as_int:
                    out[key] = int(round(v * scale))
                else:
                    out[key] = round(v * scale, digits)
        return out
