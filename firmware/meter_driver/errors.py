"""Errors of the meter drivers, shared by Modbus RTU and Modbus TCP.

The device loop catches ``ModbusError`` once, flags the reading and goes on;
the subclasses say what went wrong so the status counters can tell a silent
meter (timeout) from a noisy line (CRC) from a refusing meter (exception).
"""


class ModbusError(Exception):
    """Base class: any failed Modbus transaction."""


class ModbusTimeout(ModbusError):
    """No answer at all within the response timeout (silent or absent slave)."""


class ModbusCRCError(ModbusError):
    """An RTU frame arrived whose CRC-16 does not match (line noise)."""


class ModbusFrameError(ModbusError):
    """A frame arrived but is malformed: short, wrong unit, function, length or id."""


class ModbusConnectionError(ModbusError):
    """The TCP connection could not be opened or was closed by the peer."""


class SunSpecError(ModbusError):
    """No ``SunS`` marker at any base address, or a broken model chain."""


# Modbus Application Protocol v1.1b3, section 7: exception codes.
EXCEPTION_NAMES = {
    0x01: "ILLEGAL FUNCTION",
    0x02: "ILLEGAL DATA ADDRESS",
    0x03: "ILLEGAL DATA VALUE",
    0x04: "SERVER DEVICE FAILURE",
    0x05: "ACKNOWLEDGE",
    0x06: "SERVER DEVICE BUSY",
    0x08: "MEMORY PARITY ERROR",
    0x0A: "GATEWAY PATH UNAVAILABLE",
    0x0B: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


class ModbusExceptionResponse(ModbusError):
    """The slave answered with an exception PDU (function code | 0x80)."""

    def __init__(self, code, function=0):
        self.code = code
        self.function = function
        self.name = EXCEPTION_NAMES.get(code, "UNKNOWN EXCEPTION")
        super().__init__("exception 0x%02x %s (function 0x%02x)" % (code, self.name, function))


class ProfileError(ValueError):
    """A register profile is missing, malformed or asks for what we cannot read."""


def new_stats():
    """Per-bus counters, exposed as a plain dict for the device status."""
    return {
        "requests": 0,      # logical reads asked of the bus
        "ok": 0,            # reads that returned data
        "retries": 0,       # extra attempts after a timeout / CRC / frame error
        "timeouts": 0,
        "crc_errors": 0,
        "frame_errors": 0,
        "exceptions": 0,    # exception responses from the slave
        "connect_errors": 0,
    }
