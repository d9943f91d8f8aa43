"""Writing the ATECC608's config zone (Write, 0x12) and locking it: the driver's
``configure`` against the emulator, which refuses what the chip refuses."""

from __future__ import annotations

import pytest

from hil import atecc608_emulator as emulator
from hil.atecc608_emulator import ATECC608Emulator
from secure_sign import atecc608 as drv
from secure_sign.atecc608 import ATECC608, ATECC608Signer, crc16


def blank() -> tuple[ATECC608Emulator, ATECC608]:
    emu = ATECC608Emulator(provisioned=False, blank=True, seed=b"configure")
    return emu, ATECC608(emu)


def test_a_blank_chip_has_no_key_slot_and_cannot_sign():
    emu, chip = blank()
    chip.wake()
    assert not drv.slot_is_p256_private(chip.read_config(), 0)
    with pytest.raises(drv.ATECCNotLockedError):
        ATECC608Signer(chip, 0)


def test_configure_writes_only_the_words_that_differ_and_reads_them_back():
    emu, chip = blank()
    before = bytes(emu.config)
    chip.wake()
    got = drv.configure(chip, 0)
    changed = [w for w in range(32) if before[4 * w:4 * w + 4] != bytes(emu.config[4 * w:4 * w + 4])]
    assert changed == [4, 5, 24]  # ChipMode, SlotConfig[0], KeyConfig[0]
    assert emu.executed[emulator.OP_WRITE] == 3
    assert got == emu.config and emu.config[0:16] == before[0:16]
    # The layout is the one the emulator (and docs/secure-element.md) call production.
    assert emu.config[20] | emu.config[21] << 8 == emulator.SLOT0_CONFIG
    assert emu.config[96] | emu.config[97] << 8 == emulator.SLOT0_KEY_CONFIG
    chip.lock_config(crc16(got))
    pub = chip.genkey(0)
    chip.lock_data()
    chip.sleep()
    assert ATECC608Signer(chip, 0).public_key == pub


@pytest.mark.parametrize("word", [0, 1, 2, 3, 21])
def test_the_chip_refuses_writes_to_serial_revision_and_lock_bytes(word):
    emu, chip = blank()
    chip.wake()
    before = bytes(emu.config)
    with pytest.raises(ValueError):
        chip.write_config_word(word, b"\x00\x00\x00\x00")  # the driver will not send it
    # Sent anyway, the emulated chip answers an execution error and changes nothing.
    with pytest.raises(drv.ATECCExecutionError):
        chip._command(0x12, 0x00, drv.config_address(word >> 3, word & 7), b"\x00\x00\x00\x00", 4)
    assert bytes(emu.config) == before


def test_nothing_is_written_once_the_config_zone_is_locked():
    emu, chip = blank()
    chip.wake()
    chip.lock_config()
    with pytest.raises(drv.ATECCExecutionError):
        chip.write_config_word(5, b"\x81\x00\x00\x00")
    with pytest.raises(drv.ATECCExecutionError):
        drv.configure(chip, 0)


def test_a_config_altered_after_reading_is_not_locked():
    """Lock carries the CRC of the config the host read back: a changed byte fails it."""
    emu, chip = blank()
    chip.wake()
    cfg = drv.configure(chip, 0)
    emu.config[40] ^= 0x01  # e.g. a glitch, or someone else on the bus
    with pytest.raises(drv.ATECCExecutionError):
        chip.lock_config(crc16(cfg))
    assert emu.config[87] == 0x55
