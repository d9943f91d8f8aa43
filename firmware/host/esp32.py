"""CPython stand-in for MicroPython's ``esp32`` module (host shim): ``Partition``.

On the device the ring buffer gets its flash with
``esp32.Partition.find(esp32.Partition.TYPE_DATA, label="readings")[0]``.
On the host nothing is found until the simulation (or a test) attaches flash
for a label:

    esp32.attach_flash("readings", path="/var/lib/sim/dev7.flash", size=256 * 1024)

``path`` is the image file: it is created erased (0xFF) when missing and kept
in sync on every write/erase, so a simulated device keeps its readings across
process restarts; ``path=None`` keeps the flash in memory. The partition object
is the NOR model from ``hil/nor_flash.py`` (bits only go 1 -> 0 on write,
``ioctl(6, block)`` erases, power cuts can be injected) behind the esp32
extended block-device interface: ``readblocks(block, buf, offset=0)``,
``writeblocks(block, buf, offset=None)`` (no offset = erase then write, as on the
device), ``ioctl(op, arg)`` with 4 = block count, 5 = block size, 6 = erase.
``attach_flash(label, flash=obj)`` attaches an existing NorFlash instead.
"""

import os
import sys

try:
    from hil.nor_flash import NorFlash
except ImportError:  # firmware/host on sys.path but not the repo root
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from hil.nor_flash import NorFlash

_BLOCK = 4096
_parts = {}  # label -> Partition


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=_BLOCK):
        if isinstance(id, str):
            if id not in _parts:
                raise ValueError("partition not found")
            id = _parts[id]._flash
        self._flash = id
        self._label = ""
        self._type = Partition.TYPE_DATA
        self._subtype = 0x81  # fat; MicroPython does not care for raw use

    @staticmethod
    def find(type=TYPE_APP, subtype=0xFF, label=None, block_size=_BLOCK):
        out = []
        for p in _parts.values():
            if p._type == type and (label is None or p._label == label) and subtype in (0xFF, p._subtype):
                out.append(p)
        return out

    def info(self):
        f = self._flash
        return (self._type, self._subtype, 0, f.block_count * f.block_size, self._label, False)

    def readblocks(self, block_num, buf, offset=0):
        self._flash.readblocks(block_num, buf, offset)

    def writeblocks(self, block_num, buf, offset=None):
        self._flash.writeblocks(block_num, buf, offset)

    def ioctl(self, cmd, arg):
        return self._flash.ioctl(cmd, arg)

    def __repr__(self):
        return "<Partition type=%d, label=%s>" % (self._type, self._label)


def attach_flash(label, path=None, size=256 * 1024, block_size=_BLOCK, flash=None, subtype=0x81):
    """Back the data partition ``label`` with a NOR model (file-backed if path)."""
    if flash is None:
        flash = NorFlash(size // block_size, block_size, path=path)
    p = Partition(flash)
    p._label = label
    p._subtype = subtype
    old = _parts.get(label)
    if old is not None and old._flash is not flash:
        old._flash.close()
    _parts[label] = p
    return p


def detach_flash(label):
    p = _parts.pop(label, None)
    if p is not None:
        p._flash.close()
