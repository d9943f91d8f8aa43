"""``Meter``: the facade the device loop calls, one per source (grid meter, inverter).

``Meter(bus, profile, unit=None)``: ``bus`` is a ``ModbusRTU`` or ``ModbusTCP``
(anything with ``read_raw(unit, function, address, count)`` and ``stats``),
``profile`` a profile name (``"sdm630"``, ``"sdm120"``, ``"sunspec"``) or an
already loaded profile dict, ``unit`` the slave id (default: the profile's).

``read()`` returns a new dict with canonical keys:

- grid meter (Eastron, SunSpec 201-204): ``import_wh`` (int, cumulative),
  ``export_wh`` (int, cumulative), ``power_w`` (int, + import / - export);
- PV inverter (SunSpec 101-103): ``pv_wh`` (int, lifetime), ``pv_power_w`` (int);
- whatever else the profile has (``voltage_v``, ``current_a``,
  ``frequency_hz``, per-phase values...), floats rounded to the profile's digits;
- ``backwards`` (bool): a cumulative counter is below its previous good value.
  The values themselves are never changed.

A value the device does not implement is None (SunSpec sentinels, Eastron
NaN). ``read()`` raises a ``meter_driver.errors.ModbusError`` subclass
(``ModbusTimeout``, ``ModbusCRCError``, ``ModbusFrameError``,
``ModbusConnectionError``, ``ModbusExceptionResponse``, ``SunSpecError``) when
the source cannot be read after the bus's retries; the caller flags the
reading and goes on. ``counters()`` merges the bus's and the facade's counters
into one dict for the device status. ``open_rtu`` / ``open_tcp`` build the bus
from a profile's bus settings and the device config.
"""

from meter_driver.eastron import EastronReader
from meter_driver.errors import ModbusError
from meter_driver.profile import bus_settings, counter_keys, load_profile, uart_parity, units
from meter_driver.sunspec import SunSpecReader


class CounterGuard:
    """Flags cumulative counters that go backwards, without touching the values.

    The reference is the highest value seen that was not itself flagged, so a
    single glitch is flagged once, and a meter that was reset or swapped stays
    flagged until its counter passes the old mark: never hidden, never "fixed".
    """

    def __init__(self, keys):
        self.keys = keys
        self.last = {}

    def check(self, reading):
        back = False
        last = self.last
        for k in self.keys:
            v = reading.get(k)
            if v is None:
                continue
            prev = last.get(k)
            if prev is not None and v < prev:
                back = True
            else:
                last[k] = v
        return back


class Meter:
    def __init__(self, bus, profile, unit=None):
        if isinstance(profile, str):
            profile = load_profile(profile)
        self.profile = profile
        self.bus = bus
        self.unit = unit if unit is not None else profile["bus"].get("unit", 1)
        self.reader: EastronReader | SunSpecReader
        if profile["kind"] == "eastron":
            self.reader = EastronReader(bus, profile, self.unit)
        else:
            self.reader = SunSpecReader(bus, profile, self.unit)
        self.units = units(profile)
        self.units["backwards"] = ""
        self.guard = CounterGuard(counter_keys(profile))
        self.stats = {"reads": 0, "read_errors": 0, "backwards": 0}

    def read(self):
        out: dict = {}
        try:
            self.reader.read(out)
        except ModbusError:
            self.stats["read_errors"] += 1
            raise
        self.stats["reads"] += 1
        back = self.guard.check(out)
        if back:
            self.stats["backwards"] += 1
        out["backwards"] = back
        return out

    def info(self):
        """What we know about the device: SunSpec common model, or the profile."""
        r = self.reader
        if isinstance(r, SunSpecReader):
            models = r.models
            if models is None:
                models = r.discover()
            d = dict(r.device)
            d["sunspec_base"] = r.base
            d["models"] = [m[0] for m in models]
            return d
        return {"model": self.profile["name"], "description": self.profile.get("description", "")}

    def counters(self):
        c = dict(self.bus.stats)
        c.update(self.stats)
        c.update(getattr(self.reader, "stats", {}))
        return c


def open_rtu(uart_id, profile, baudrate=None, parity=None, de_pin=None, tx=None, rx=None,
             timeout_ms=None, retries=None):
    """A ``ModbusRTU`` on ``machine.UART(uart_id)`` with the profile's bus settings.

    Arguments left None come from the profile (e.g. the SDM120's 2400 baud);
    the config overrides them for meters re-configured in the field.
    """
    import machine
    from meter_driver.modbus_rtu import ModbusRTU

    if isinstance(profile, str):
        profile = load_profile(profile)
    b = bus_settings(profile, {"baudrate": baudrate, "parity": parity,
                               "timeout_ms": timeout_ms, "retries": retries})
    par = uart_parity(b.get("parity", "N"))
    kw = {}
    if tx is not None:
        kw["tx"] = tx
    if rx is not None:
        kw["rx"] = rx
    uart = machine.UART(uart_id, baudrate=b["baudrate"], bits=b.get("bits", 8), parity=par,
                        stop=b.get("stop", 1), timeout=0, **kw)
    de = machine.Pin(de_pin, machine.Pin.OUT, value=0) if de_pin is not None else None
    return ModbusRTU(uart, de, baudrate=b["baudrate"], bits=b.get("bits", 8), parity=par,
                     stop=b.get("stop", 1), timeout_ms=b.get("timeout_ms", 500),
                     retries=b.get("retries", 2))


def open_tcp(host, profile, port=None, timeout_ms=None, retries=None):
    """A ``ModbusTCP`` to ``host`` with the profile's timeout and retries."""
    from meter_driver.modbus_tcp import ModbusTCP

    if isinstance(profile, str):
        profile = load_profile(profile)
    b = bus_settings(profile, {"port": port, "timeout_ms": timeout_ms, "retries": retries})
    return ModbusTCP(host, b.get("port", 502), timeout_ms=b.get("timeout_ms", 1000),
                     retries=b.get("retries", 1))
