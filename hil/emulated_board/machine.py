"""``machine`` of the emulated board (MicroPython under Node, hil/raw_repl_board.py).

The hardware, which outlives soft reboots (the board never unloads this module):
I2C bus 0 is an ATECC608 emulator that speaks the chip's real packets; every
UART is the RS485 line to one SDM630 answering real Modbus RTU frames
(``meter()`` gives its registers); ``reset()`` asks the board to reboot.
"""

import atecc608_emulator
from modbus_slave_uart import SlaveUART

SEED = b"emulated-board"
_chips = {}


class ResetRequested(Exception):
    pass


_meter = []


def meter():
    """The SDM630 on the RS485 line: 1,000 kWh imported, 12.5 kWh exported, 830 W."""
    if not _meter:
        m = SlaveUART(unit=1, max_regs=60)
        for a in range(0, 80):
            m.input[a] = 0
        for a in range(342, 344):
            m.input[a] = 0
        m.set_float(m.input, 72, 1000.0)
        m.set_float(m.input, 74, 12.5)
        m.set_float(m.input, 52, 830.0)
        _meter.append(m)
    return _meter[0]


def UART(uart_id, baudrate=9600, bits=8, parity=None, stop=1, timeout=0, **kw):
    return meter()


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, n, mode=None, value=None, **kw):
        self.n = n
        self._v = value or 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = v


def I2C(bus_id, scl=None, sda=None, freq=100000):
    chip = _chips.get(bus_id)
    if chip is None:
        chip = atecc608_emulator.ATECC608Emulator(provisioned=False, blank=True, seed=SEED)
        _chips[bus_id] = chip
    return chip


class WDT:
    def __init__(self, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass


def reset():
    raise ResetRequested("machine reset")
