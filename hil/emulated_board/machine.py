"""``machine`` of the emulated board (MicroPython under Node, hil/raw_repl_board.py).

I2C bus 0 is an ATECC608 emulator that speaks the chip's real packets; it is
hardware, so it outlives soft reboots (this module is never unloaded). reset()
asks the board to reboot.
"""

import atecc608_emulator

SEED = b"emulated-board"
_chips = {}


class ResetRequested(Exception):
    pass


class Pin:
    def __init__(self, n, *args, **kw):
        self.n = n


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
