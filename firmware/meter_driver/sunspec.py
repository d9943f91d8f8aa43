"""SunSpec reader: discovery, the model chain, scale factors, "not implemented".

SunSpec devices put the marker ``SunS`` (0x5375 0x6E53) at holding register
40000, 0 or 50000; the models follow as (ID, L, L registers of body) until ID
0xFFFF. Which models we understand and where their points sit is data
(``profiles/sunspec.json``, cross-checked against pysunspec2's model
definitions in the tests). Values are integers with a separate scale factor
point (``sunssf``): value = raw * 10**sf.

"Not implemented" sentinels (SunSpec Information Model Reference): int16 and
sunssf 0x8000, uint16/enum16/bitfield16 0xFFFF, int32 0x80000000,
uint32/enum32/bitfield32 0xFFFFFFFF, empty strings, NaN floats. They read as
None, and so does every value whose scale factor is not implemented or out of
the spec's -10..10 range. Accumulators (acc16/acc32/acc64) have no sentinel
here: the spec's "0 = not implemented" would hide the honest 0 Wh exported by a
meter in a house without PV, and a counter that reads 0 is still checked for
going backwards.
"""

import struct

from meter_driver.errors import ModbusExceptionResponse, SunSpecError

_FMT = {
    "int16": (">h", -0x8000), "uint16": (">H", 0xFFFF), "enum16": (">H", 0xFFFF),
    "bitfield16": (">H", 0xFFFF), "sunssf": (">h", -0x8000), "acc16": (">H", None),
    "int32": (">i", -0x80000000), "uint32": (">I", 0xFFFFFFFF), "enum32": (">I", 0xFFFFFFFF),
    "bitfield32": (">I", 0xFFFFFFFF), "acc32": (">I", None), "acc64": (">Q", None),
    "float32": (">f", None),
}
_SUNS = b"SunS"
_END = 0xFFFF
_ILLEGAL_ADDRESS = 2


def decode_point(buf, off, ptype, size=1):
    """One point's raw value from ``buf`` at byte ``off``; None when not implemented."""
    if ptype == "string":
        s = bytes(buf[off:off + 2 * size])
        i = s.find(b"\x00")
        if i >= 0:
            s = s[:i]
        text = s.decode().strip()
        return text or None
    fmt, sentinel = _FMT[ptype]
    v = struct.unpack_from(fmt, buf, off)[0]
    if v == sentinel or v != v:
        return None
    return v


class _Model:
    # One supported model's compiled point list.
    def __init__(self, spec):
        self.name = spec["name"]
        self.length = spec["length"]
        self.once = bool(spec.get("once"))
        self.sfs = []
        self.points = []
        for p in spec["points"]:
            if p["type"] not in _FMT and p["type"] != "string":
                raise SunSpecError("profile: unknown type %s" % p["type"])
            if p["type"] == "sunssf":
                self.sfs.append((p["name"], 2 * p["offset"]))
            elif p.get("key"):
                self.points.append((p["key"], 2 * p["offset"], p["type"], p.get("size", 1),
                                    p.get("sf"), bool(p.get("int")), p.get("digits", 3)))


class SunSpecReader:
    def __init__(self, bus, profile, unit=1):
        self.bus = bus
        self.unit = unit
        b = profile["bus"]
        self.function = b.get("function", 3)
        self.max_regs = b["max_regs"]
        self.bases = profile["bases"]
        self.max_models = profile.get("max_models", 32)
        self.specs = {}
        longest = 2
        for spec in profile["models"]:
            m = _Model(spec)
            longest = max(longest, m.length)
            for i in spec["ids"]:
                self.specs[i] = m
        self._buf = bytearray(2 * longest)
        self.base = None
        # [(model id, body address, length)] after discover()
        self.models: list[tuple[int, int, int]] | None = None
        self.device: dict = {}  # common model (1) points, read once at discovery
        self.stats = {"discoveries": 0, "not_implemented": 0}

    def discover(self):
        """Find ``SunS``, walk the model chain, read the once-only models (common)."""
        self.stats["discoveries"] += 1
        bus = self.bus
        for base in self.bases:
            try:
                mark = bus.read_raw(self.unit, self.function, base, 2)
            except ModbusExceptionResponse:
                continue    # nothing mapped there: try the next base
            if bytes(mark) == _SUNS:
                break
        else:
            raise SunSpecError("no SunS marker at %s" % (self.bases,))
        models: list[tuple[int, int, int]] = []
        addr = base + 2
        for _ in range(self.max_models + 1):
            try:
                hdr = bus.read_raw(self.unit, self.function, addr, 2)
            except ModbusExceptionResponse as e:
                # Some devices end the map without the 0xFFFF marker.
                if e.code == _ILLEGAL_ADDRESS and models:
                    break
                raise
            mid, length = struct.unpack_from(">HH", hdr, 0)
            if mid == _END:
                break
            if addr + 2 + length > 0x10000:
                raise SunSpecError("model %d at %d runs past the address space" % (mid, addr))
            models.append((mid, addr + 2, length))
            addr += 2 + length
        else:
            raise SunSpecError("no end of model chain after %d models" % self.max_models)
        self.base = base
        self.models = models
        dev: dict = {}
        for mid, body, length in models:
            m = self.specs.get(mid)
            if m is not None and m.once:
                self._decode(m, body, length, dev)
        self.device = dev
        return models

    def _decode(self, m, body, length, out):
        n = min(length, m.length)
        buf = self._buf
        done = 0
        while done < n:
            k = min(self.max_regs, n - done)
            data = self.bus.read_raw(self.unit, self.function, body + done, k)
            buf[2 * done:2 * (done + k)] = data
            done += k
        sf = {}
        for name, off in m.sfs:
            v = decode_point(buf, off, "sunssf") if off < 2 * n else None
            sf[name] = v if v is not None and -10 <= v <= 10 else None
        for key, off, ptype, size, sfname, as_int, digits in m.points:
            if key in out:
                continue    # the first model of a kind wins
            v = decode_point(buf, off, ptype, size) if off + 2 * size <= 2 * n else None
            if v is not None and sfname is not None:
                s = sf.get(sfname)
                v = None if s is None else (v * 10 ** s if s else v)
            if v is None:
                self.stats["not_implemented"] += 1
            elif as_int:
                v = int(round(v))
            elif not isinstance(v, str):
                v = round(v, digits)
            out[key] = v

    def read(self, out):
        """Fill ``out`` from every supported model; discovers first if needed."""
        models = self.models
        if models is None:
            models = self.discover()
        try:
            for mid, body, length in models:
                m = self.specs.get(mid)
                if m is not None and not m.once:
                    self._decode(m, body, length, out)
        except ModbusExceptionResponse as e:
            if e.code == _ILLEGAL_ADDRESS:
                self.models = None      # the map moved (firmware update): rediscover
            raise
        return out
