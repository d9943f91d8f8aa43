"""CPython stand-in for MicroPython's ``machine`` module (host shim).

Only what the firmware touches: ``UART`` (backed by pyserial, so the Modbus
driver talks to real serial ports and pseudo-terminals), ``Pin``, ``I2C``
(backed by whatever device object is attached, e.g. the ATECC608 emulator),
``WDT``, ``unique_id`` and ``reset``. Hardware is wired with ``attach_*``.
"""

import os
import time

_uart_ports = {}   # UART id -> serial port path (e.g. a pty from the virtual rig)
_i2c_buses = {}    # I2C id -> object with writeto/readfrom_into (an emulator)


def attach_uart(uart_id, port):
    _uart_ports[uart_id] = port


def attach_i2c(i2c_id, bus):
    _i2c_buses[i2c_id] = bus


class UART:
    """MicroPython UART API over a pyserial port."""

    def __init__(self, uart_id, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None,
                 timeout=0, timeout_char=0, **_kw):
        import serial  # pyserial; only on the host

        self._serial = serial.Serial()
        self._serial.port = _uart_ports[uart_id]
        self.init(baudrate, bits, parity, stop, timeout=timeout, timeout_char=timeout_char)
        self._serial.open()

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, timeout=0, timeout_char=0, **_kw):
        s = self._serial
        s.baudrate = baudrate
        s.bytesize = bits
        s.parity = {None: "N", 0: "E", 1: "O"}[parity]
        s.stopbits = stop
        s.timeout = timeout / 1000 if timeout else 0
        self._timeout_char = timeout_char

    def any(self):
        return self._serial.in_waiting

    def read(self, nbytes=None):
        n = nbytes if nbytes is not None else max(1, self._serial.in_waiting)
        data = self._serial.read(n)
        return data or None

    def readinto(self, buf, nbytes=None):
        data = self.read(len(buf) if nbytes is None else nbytes)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def write(self, buf):
        return self._serial.write(bytes(buf))

    def flush(self):
        self._serial.flush()

    def txdone(self):
        return self._serial.out_waiting == 0

    def deinit(self):
        self._serial.close()


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin_id, mode=-1, value=None, **_kw):
        self.id = pin_id
        self._value = 0 if value is None else value

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        return None

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    __call__ = value


class I2C:
    """MicroPython I2C API forwarding to an attached device model."""

    def __init__(self, i2c_id, scl=None, sda=None, freq=400000, **_kw):
        self._bus = _i2c_buses[i2c_id]
        self.freq = freq

    def scan(self):
        return self._bus.scan() if hasattr(self._bus, "scan") else []

    def writeto(self, addr, buf, stop=True):
        return self._bus.writeto(addr, buf, stop)

    def readfrom_into(self, addr, buf, stop=True):
        return self._bus.readfrom_into(addr, buf, stop)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self._bus.readfrom_into(addr, buf, stop)
        return bytes(buf)


class WDT:
    """Watchdog: on the host it records feeds; a missed deadline raises."""

    def __init__(self, wdt_id=0, timeout=5000):
        self.timeout = timeout
        self._last = time.monotonic()

    def feed(self):
        now = time.monotonic()
        if (now - self._last) * 1000 > self.timeout:
            raise RuntimeError("watchdog would have reset the device")
        self._last = now


def unique_id():
    return os.urandom(6)


def reset():
    raise SystemExit("machine.reset()")
