"""``esp32`` of the emulated board: the ``readings`` data partition is a NOR flash
model (hil/nor_flash.py), kept across soft reboots like the real flash."""

from nor_flash import NorFlash

_parts = {}


class Partition:
    TYPE_DATA = 1

    @staticmethod
    def find(type_, label=None):
        if label != "readings":
            return []
        if label not in _parts:
            _parts[label] = NorFlash(32)
        return [_parts[label]]
