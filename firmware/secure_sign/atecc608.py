"""Microchip ATECC608 secure element over I2C, and a Signer on top of it.

Section references are to the ATECC608A/B data sheets (DS40001977, DS40002239)
and the CryptoAuthLib sources, whose names the constants follow.

I/O protocol (data sheet section 6): the host wakes the chip by holding SDA low
for at least t_WLO = 60 us (here: a write to I2C address 0x00, which at 100 kHz
holds SDA low for ~80 us; nobody acknowledges it) and waits t_WHI = 1.5 ms; the
chip then answers 04 11 33 43 (count, status 0x11 "after wake", CRC). Every
transaction to the chip starts with a word address: 0x00 reset (restart the I/O
buffer pointer), 0x01 sleep, 0x02 idle, 0x03 command. A command packet is
count | opcode | param1 | param2 (LE) | data | CRC-16 (LE), count covering all of
it; the response is count | data | CRC-16. While a command executes the chip
does not acknowledge its address: the driver polls with a backoff, up to the
data sheet's maximum execution time for that command.

The private key is generated inside the chip (GenKey) and cannot be read out:
with KeyConfig.Private set the chip refuses any Read of the slot. ``sign_digest``
moves only the digest in (Nonce pass-through into TempKey) and the signature out.

Allocation: packets are built in preallocated buffers; a Nonce + Sign cycle
allocates the returned 64-byte signature plus a few memoryview slices and the
OSError objects of the address NACKs while the chip is busy.
"""

import time

from micropython import const

# Word address values (section 6.2.1)
_WA_RESET = const(0x00)
_WA_SLEEP = const(0x01)
_WA_IDLE = const(0x02)
_WA_COMMAND = const(0x03)

# Opcodes (section 11, table 11-1)
_ATECC_CMD_READ = const(0x02)
_ATECC_CMD_WRITE = const(0x12)
_ATECC_CMD_NONCE = const(0x16)
_ATECC_CMD_LOCK = const(0x17)
_ATECC_CMD_RANDOM = const(0x1B)
_ATECC_CMD_INFO = const(0x30)
_ATECC_CMD_GENKEY = const(0x40)
_ATECC_CMD_SIGN = const(0x41)

# Maximum execution times in ms, ChipMode clock divider M0 (table 11-3)
_EXEC_MAX_MS = {
    _ATECC_CMD_READ: 5,
    _ATECC_CMD_WRITE: 45,
    _ATECC_CMD_NONCE: 20,
    _ATECC_CMD_LOCK: 35,
    _ATECC_CMD_RANDOM: 23,
    _ATECC_CMD_INFO: 5,
    _ATECC_CMD_GENKEY: 115,
    _ATECC_CMD_SIGN: 115,
}

# Parameters
_ZONE_CONFIG = const(0x00)
_ZONE_OTP = const(0x01)
_ZONE_DATA = const(0x02)
_ZONE_READ32 = const(0x80)
_INFO_MODE_REVISION = const(0x00)
_NONCE_MODE_PASSTHROUGH = const(0x03)
_GENKEY_MODE_PUBLIC = const(0x00)
_GENKEY_MODE_PRIVATE = const(0x04)
_SIGN_MODE_EXTERNAL = const(0x80)
_LOCK_ZONE_CONFIG = const(0x00)
_LOCK_ZONE_DATA = const(0x01)
_LOCK_ZONE_SLOT = const(0x02)
_LOCK_ZONE_NO_CRC = const(0x80)
_RANDOM_MODE_SEED_UPDATE = const(0x00)

# Status codes (section 6.3.1, table 6-3)
STATUS_SUCCESS = const(0x00)
STATUS_CHECKMAC_FAIL = const(0x01)
STATUS_PARSE_ERROR = const(0x03)
STATUS_ECC_FAULT = const(0x05)
STATUS_SELFTEST_ERROR = const(0x07)
STATUS_HEALTH_TEST_ERROR = const(0x08)
STATUS_EXECUTION_ERROR = const(0x0F)
STATUS_AFTER_WAKE = const(0x11)
STATUS_WATCHDOG = const(0xEE)
STATUS_COMM_ERROR = const(0xFF)

# Config zone offsets (section 2.2, table 2-4)
CFG_LOCK_VALUE = const(86)   # data and OTP zones: 0x55 unlocked, 0x00 locked
CFG_LOCK_CONFIG = const(87)  # configuration zone
CFG_SLOT_LOCKED = const(88)  # 2 bytes, bit i clear = slot i locked
CFG_SLOT_CONFIG = const(20)  # 16 x 2 bytes LE
CFG_KEY_CONFIG = const(96)   # 16 x 2 bytes LE
CFG_CHIP_MODE = const(19)    # clock divider, watchdog, TTL, I2C address source
# Config words (4 bytes) the Write command may change: bytes 0-15 (serial number,
# revision, I2C enable) never, bytes 84-87 (UserExtra, LockValue, LockConfig)
# only through UpdateExtra and Lock (section 2.2, table 2-5).
WRITABLE_CONFIG_WORDS = tuple(w for w in range(4, 32) if w != 21)

# Production slot configuration (docs/secure-element.md). The device key slot:
# SlotConfig 0x0081 (external Sign only, IsSecret, no GenKey/PrivWrite once the
# data zone is locked), KeyConfig 0x0013 (Private, PubInfo, P-256); ChipMode 0x00
# (clock divider M0: the execution times polled for; 1.3 s watchdog).
KEY_SLOT_CONFIG = const(0x0081)
KEY_KEY_CONFIG = const(0x0013)
CHIP_MODE = const(0x00)
_LOCKED = const(0x00)

_T_WHI_US = const(1500)   # wake high delay before first communication
_RETRIES = const(3)
_RSP_MAX = const(75)      # longest response (GenKey/Verify with 72 bytes)
_DATA_MAX = const(64)     # longest data field this driver sends
_WORD_ADDRESS = (b"\x00", b"\x01", b"\x02")  # one-byte writes: reset, sleep, idle


class ATECCError(Exception):
    """Base of the driver's errors; ``status`` is the chip's status byte, if any."""

    status: int | None = None


class ATECCCheckMacError(ATECCError):
    status = STATUS_CHECKMAC_FAIL       # CheckMac/Verify miscompare


class ATECCParseError(ATECCError):
    status = STATUS_PARSE_ERROR         # illegal opcode, parameter or length


class ATECCECCFault(ATECCError):
    status = STATUS_ECC_FAULT           # ECC computation failed, may retry


class ATECCSelfTestError(ATECCError):
    status = STATUS_SELFTEST_ERROR      # 0x07 self test / 0x08 health test failed


class ATECCExecutionError(ATECCError):
    status = STATUS_EXECUTION_ERROR     # not allowed now (lock state, TempKey, slot)


class ATECCWakeStatusError(ATECCError):
    status = STATUS_AFTER_WAKE          # 0x11 where a command result was due


class ATECCWatchdogError(ATECCError):
    status = STATUS_WATCHDOG            # watchdog about to expire: idle/sleep first


class ATECCCommError(ATECCError):
    status = STATUS_COMM_ERROR          # the chip saw a bad CRC or framing


class ATECCCRCError(ATECCError):
    """The response's CRC did not match (after re-reads)."""


class ATECCResponseError(ATECCError):
    """A response of the wrong length or count for the command."""


class ATECCNoResponseError(ATECCError):
    """No acknowledge from the chip (absent, asleep, or beyond the max execution time)."""


class ATECCWakeError(ATECCError):
    """The chip did not answer the wake pulse with the wake token."""


class ATECCNotLockedError(ATECCError):
    """Config or data zone unlocked: the chip is not provisioned, refuse to use it."""


class ATECCConfigError(ATECCError):
    """The slot is not configured as a P-256 private key."""


_STATUS_ERRORS = {
    STATUS_CHECKMAC_FAIL: ATECCCheckMacError,
    STATUS_PARSE_ERROR: ATECCParseError,
    STATUS_ECC_FAULT: ATECCECCFault,
    STATUS_SELFTEST_ERROR: ATECCSelfTestError,
    STATUS_HEALTH_TEST_ERROR: ATECCSelfTestError,
    STATUS_EXECUTION_ERROR: ATECCExecutionError,
    STATUS_AFTER_WAKE: ATECCWakeStatusError,
    STATUS_WATCHDOG: ATECCWatchdogError,
    STATUS_COMM_ERROR: ATECCCommError,
}


def status_error(status):
    """The exception for a non-zero status byte (unknown codes: ATECCError)."""
    cls = _STATUS_ERRORS.get(status, ATECCError)
    err = cls("ATECC608 status 0x%02X" % status)
    err.status = status
    return err


# CRC-16 as the CryptoAuthLib computes it (atCRC): polynomial 0x8005, register
# initialised to 0, each data byte fed LSB first into an MSB-first register,
# result sent LSB first. Table-driven: _CRC_REV reverses a byte's bits.
def _build_crc_tables():
    rev = bytearray(256)
    tab = [0] * 256
    for i in range(256):
        r = 0
        for b in range(8):
            if i & (1 << b):
                r |= 0x80 >> b
        rev[i] = r
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) if c & 0x8000 else (c << 1)
        tab[i] = c & 0xFFFF
    return bytes(rev), tuple(tab)


_CRC_REV, _CRC_TAB = _build_crc_tables()


def crc16(buf, start=0, end=None):
    """CRC-16/0x8005 of buf[start:end] as an int (send it little-endian)."""
    if end is None:
        end = len(buf)
    crc = 0
    rev, tab = _CRC_REV, _CRC_TAB
    for i in range(start, end):
        crc = ((crc << 8) & 0xFFFF) ^ tab[(crc >> 8) ^ rev[buf[i]]]
    return crc


class ATECC608:
    """Driver for the ATECC608A/B on a MicroPython ``machine.I2C``-like bus.

    The bus needs ``writeto(addr, buf)`` and ``readfrom_into(addr, buf)``; run it at
    100 kHz or below so the wake write holds SDA low long enough (t_WLO).
    Counters (ints, never reset by the driver): ``commands``, ``wakes``,
    ``retries``, ``crc_errors``, ``nacks``, ``status_errors``, ``timeouts``.
    """

    def __init__(self, i2c, address=0x60):
        self._i2c = i2c
        self._addr = address
        self._tx = bytearray(8 + _DATA_MAX)   # word address + 7-byte frame + data
        self._txmv = memoryview(self._tx)
        self._rx = bytearray(_RSP_MAX)
        self._rxmv = memoryview(self._rx)
        self._one = memoryview(self._rx)[:1]
        self._four = memoryview(self._rx)[:4]
        self.commands = 0
        self.wakes = 0
        self.retries = 0
        self.crc_errors = 0
        self.nacks = 0
        self.status_errors = 0
        self.timeouts = 0

    # -- power states (section 6.2) -------------------------------------------
    def wake(self):
        """Wake pulse, t_WHI, then expect the wake token 04 11 33 43."""
        for attempt in range(2):
            try:
                self._i2c.writeto(0x00, b"\x00")
            except OSError:
                pass  # address 0 is never acknowledged: the write is only the pulse
            time.sleep_us(_T_WHI_US)
            self.wakes += 1
            try:
                self._i2c.readfrom_into(self._addr, self._four)
            except OSError:
                self.nacks += 1
                continue
            if self._rx[0] == 0x04 and self._rx[1] == 0x11 and self._rx[2] == 0x33 and self._rx[3] == 0x43:
                return
            # Already awake with an old response in the buffer: idle, then wake again.
            self.idle()
        raise ATECCWakeError("no wake token from ATECC608 at 0x%02X" % self._addr)

    def _word(self, wa):
        try:
            self._i2c.writeto(self._addr, _WORD_ADDRESS[wa])
        except OSError:
            self.nacks += 1  # already asleep: nothing to do

    def idle(self):
        """Idle (word address 0x02): low power, keeps TempKey, resets the watchdog."""
        self._word(_WA_IDLE)

    def sleep(self):
        """Sleep (word address 0x01): lowest power, clears TempKey and all volatile state."""
        self._word(_WA_SLEEP)

    # -- the transaction helper ----------------------------------------------
    def _command(self, opcode, param1, param2, data=None, rsp_len=4):
        """Send one command, poll for its response, check it; return the data length.

        The response data are in ``self._rx[1:1 + n]``. A chip-side comm error
        (status 0xFF) resends the packet; a CRC error on our side re-reads the
        response after a word-address reset (the chip keeps it in its buffer).
        """
        tx = self._tx
        n = 0 if data is None else len(data)
        if n > _DATA_MAX:
            raise ValueError("data too long")
        count = 7 + n
        tx[0] = _WA_COMMAND
        tx[1] = count
        tx[2] = opcode
        tx[3] = param1
        tx[4] = param2 & 0xFF
        tx[5] = param2 >> 8
        if n:
            tx[6:6 + n] = data
        crc = crc16(tx, 1, 6 + n)
        tx[6 + n] = crc & 0xFF
        tx[7 + n] = crc >> 8
        packet = self._txmv[: 8 + n]
        max_ms = _EXEC_MAX_MS[opcode]
        self.commands += 1
        for attempt in range(_RETRIES + 1):
            if attempt:
                self.retries += 1
            try:
                self._i2c.writeto(self._addr, packet)
            except OSError:
                # Busy or asleep. Waking here would silently lose TempKey, so
                # after the retries the caller restarts its whole sequence.
                self.nacks += 1
                if attempt == _RETRIES:
                    raise ATECCNoResponseError("ATECC608 at 0x%02X does not acknowledge" % self._addr)
                time.sleep_ms(1)
                continue
            got = self._read_response(max_ms, rsp_len)
            if got == 1 and self._rx[1] == STATUS_COMM_ERROR:
                continue  # the chip saw a corrupted packet: resend
            return got
        raise ATECCCommError("ATECC608 command 0x%02X failed after %d tries" % (opcode, _RETRIES + 1))

    def _read_response(self, max_ms, rsp_len):
        rx = self._rx
        start = time.ticks_ms()
        delay = 1
        polls = 0
        while True:  # poll: the chip NACKs its address while executing
            time.sleep_ms(delay)
            late = time.ticks_diff(time.ticks_ms(), start) > max_ms
            polls += 1
            try:
                self._i2c.readfrom_into(self._addr, self._one)
                break
            except OSError:
                self.nacks += 1
            # Give up only when a poll after the maximum execution time still
            # NACKs, and never on the first polls: a late wake-up of this task
            # (a busy scheduler) must not be mistaken for a stuck chip.
            if late and polls >= 3:
                self.timeouts += 1
                raise ATECCNoResponseError("ATECC608 busy beyond %d ms" % max_ms)
            delay = delay * 2 if delay < 16 else 16
        for attempt in range(_RETRIES + 1):
            count = rx[0]
            if count < 4 or count > _RSP_MAX:
                self.crc_errors += 1
                raise ATECCResponseError("bad response count %d" % count)
            self._i2c.readfrom_into(self._addr, self._rxmv[1:count])
            crc = crc16(rx, 0, count - 2)
            if rx[count - 2] == crc & 0xFF and rx[count - 1] == crc >> 8:
                break
            self.crc_errors += 1
            if attempt == _RETRIES:
                raise ATECCCRCError("response CRC mismatch")
            self.retries += 1
            self._word(_WA_RESET)  # restart the I/O buffer pointer, read it again
            self._i2c.readfrom_into(self._addr, self._one)
        if count == 4:
            status = rx[1]
            if status != STATUS_SUCCESS and status != STATUS_COMM_ERROR:
                self.status_errors += 1
                raise status_error(status)
            if status == STATUS_SUCCESS and rsp_len != 4:
                raise ATECCResponseError("status-only response where %d bytes were due" % rsp_len)
            return 1
        if count != rsp_len:
            raise ATECCResponseError("response of %d bytes, expected %d" % (count, rsp_len))
        return count - 3

    # -- commands --------------------------------------------------------------
    def info(self):
        """Info, Revision mode (section 11.8): 4 bytes, e.g. 00 00 60 03 for the 608B."""
        self._command(_ATECC_CMD_INFO, _INFO_MODE_REVISION, 0, None, 7)
        return bytes(self._rx[1:5])

    def read(self, zone, address, length=32, into=None):
        """Read (section 11.12) a 4- or 32-byte block; ``address`` is param2 as encoded
        by ``config_address``/``data_address``. Returns bytes, or fills ``into``."""
        if length not in (4, 32):
            raise ValueError("read length is 4 or 32")
        p1 = zone | (_ZONE_READ32 if length == 32 else 0)
        self._command(_ATECC_CMD_READ, p1, address, None, length + 3)
        if into is None:
            return bytes(self._rx[1:1 + length])
        into[:length] = self._rxmv[1:1 + length]
        return into

    def read_config(self):
        """The 128-byte configuration zone (four 32-byte block reads)."""
        cfg = bytearray(128)
        mv = memoryview(cfg)
        for block in range(4):
            self.read(_ZONE_CONFIG, config_address(block, 0), 32, mv[block * 32:])
        return cfg

    def serial_number(self, cfg=None):
        """The 9-byte serial number: config bytes 0-3 and 8-12 (section 2.2.1)."""
        if cfg is None:
            cfg = self.read_config()
        return bytes(cfg[0:4]) + bytes(cfg[8:13])

    def check_locked(self, cfg=None):
        """Raise ATECCNotLockedError unless both config and data zones are locked."""
        if cfg is None:
            cfg = self.read_config()
        if cfg[CFG_LOCK_CONFIG] != _LOCKED:
            raise ATECCNotLockedError("configuration zone is not locked")
        if cfg[CFG_LOCK_VALUE] != _LOCKED:
            raise ATECCNotLockedError("data zone is not locked")

    def write_config_word(self, word, data):
        """Write (section 11.18) one 4-byte word of the unlocked config zone, in clear."""
        if word not in WRITABLE_CONFIG_WORDS or len(data) != 4:
            raise ValueError("config word 4..31 except 21, 4 bytes")
        self._command(_ATECC_CMD_WRITE, _ZONE_CONFIG, config_address(word >> 3, word & 7), data, 4)

    def random(self):
        """Random (section 11.13): 32 bytes from the chip's DRBG (a fixed pattern
        FF FF 00 00 ... while the config zone is unlocked)."""
        self._command(_ATECC_CMD_RANDOM, _RANDOM_MODE_SEED_UPDATE, 0, None, 35)
        return bytes(self._rx[1:33])

    def nonce_load(self, digest):
        """Nonce pass-through (section 11.10, mode 3): load a 32-byte value into TempKey."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        self._command(_ATECC_CMD_NONCE, _NONCE_MODE_PASSTHROUGH, 0, digest, 4)

    def genkey(self, slot):
        """GenKey private-key mode (section 11.7, mode 0x04): a new P-256 key is
        created inside the chip in ``slot``; returns its 64-byte public key."""
        self._command(_ATECC_CMD_GENKEY, _GENKEY_MODE_PRIVATE, _check_slot(slot), None, 67)
        return bytes(self._rx[1:65])

    def public_key(self, slot):
        """GenKey public-key mode (mode 0x00): recompute the public key of ``slot``."""
        self._command(_ATECC_CMD_GENKEY, _GENKEY_MODE_PUBLIC, _check_slot(slot), None, 67)
        return bytes(self._rx[1:65])

    def sign(self, slot):
        """Sign external (section 11.15, mode 0x80): ECDSA over TempKey with the
        private key in ``slot``; returns 64 bytes r||s. The chip invalidates TempKey."""
        self._command(_ATECC_CMD_SIGN, _SIGN_MODE_EXTERNAL, _check_slot(slot), None, 67)
        return bytes(self._rx[1:65])

    def lock_config(self, summary_crc=None):
        """Lock the config zone (section 11.9). With ``summary_crc`` (CRC-16 of the
        128 config bytes as the host expects them) the chip refuses on mismatch."""
        if summary_crc is None:
            self._command(_ATECC_CMD_LOCK, _LOCK_ZONE_CONFIG | _LOCK_ZONE_NO_CRC, 0)
        else:
            self._command(_ATECC_CMD_LOCK, _LOCK_ZONE_CONFIG, summary_crc)

    def lock_data(self):
        """Lock the data and OTP zones. No summary CRC: the host cannot know the
        private keys the chip generated, so the CRC cannot be precomputed."""
        self._command(_ATECC_CMD_LOCK, _LOCK_ZONE_DATA | _LOCK_ZONE_NO_CRC, 0)

    def lock_slot(self, slot):
        """Lock one slot (KeyConfig.Lockable must be set): no further GenKey/PrivWrite."""
        self._command(_ATECC_CMD_LOCK, _LOCK_ZONE_SLOT | _LOCK_ZONE_NO_CRC | (_check_slot(slot) << 2), 0)


def config_address(block, word):
    """Read/Write param2 for the config zone: block (0-3) and 4-byte word (0-7)."""
    return (block << 3) | word


def data_address(slot, block, word=0):
    """Read/Write param2 for the data zone (section 9.1.4)."""
    return (block << 8) | (slot << 3) | word


def _check_slot(slot):
    if not 0 <= slot <= 15:
        raise ValueError("slot 0..15")
    return slot


def slot_is_p256_private(cfg, slot):
    """True if KeyConfig marks ``slot`` as a P-256 private key (Private=1, KeyType=4)."""
    kc = cfg[CFG_KEY_CONFIG + 2 * slot] | (cfg[CFG_KEY_CONFIG + 2 * slot + 1] << 8)
    return (kc & 0x01) == 1 and ((kc >> 2) & 0x07) == 4


def production_config(cfg, slot=0):
    """``cfg`` (128 bytes) with the production slot layout for the key ``slot`` and
    ChipMode; every other byte (I2C address, counters, other slots) as it was."""
    want = bytearray(cfg)
    want[CFG_CHIP_MODE] = CHIP_MODE
    want[CFG_SLOT_CONFIG + 2 * slot] = KEY_SLOT_CONFIG & 0xFF
    want[CFG_SLOT_CONFIG + 2 * slot + 1] = KEY_SLOT_CONFIG >> 8
    want[CFG_KEY_CONFIG + 2 * slot] = KEY_KEY_CONFIG & 0xFF
    want[CFG_KEY_CONFIG + 2 * slot + 1] = KEY_KEY_CONFIG >> 8
    return want


def configure(chip, slot=0):
    """Write the production layout into an unlocked config zone, word by word where
    it differs, read it back and compare. Returns the config read back; does not
    lock (``provision`` locks with this config's CRC). The chip must be awake."""
    cfg = chip.read_config()
    if cfg[CFG_LOCK_CONFIG] == _LOCKED:
        raise ATECCExecutionError("configuration zone is already locked")
    want = production_config(cfg, slot)
    for w in WRITABLE_CONFIG_WORDS:
        o = 4 * w
        if cfg[o:o + 4] != want[o:o + 4]:
            chip.write_config_word(w, want[o:o + 4])
    got = chip.read_config()
    if got != want:
        raise ATECCConfigError("config zone reads back differently from what was written")
    return got


def provision(chip, slot=0):
    """Factory step: lock the config zone (with its summary CRC), generate the key
    in ``slot`` inside the chip, lock the data zone. Returns the public key.

    The config zone must already hold the intended configuration (written by the
    programming fixture; see docs/secure-element.md). Idempotent for the steps
    already done; a chip whose data zone is locked is left untouched.
    """
    chip.wake()
    try:
        cfg = chip.read_config()
        if cfg[CFG_LOCK_CONFIG] != _LOCKED:
            chip.lock_config(crc16(cfg))
            cfg = chip.read_config()
        if not slot_is_p256_private(cfg, slot):
            raise ATECCConfigError("slot %d is not a P-256 private key slot" % slot)
        if cfg[CFG_LOCK_VALUE] != _LOCKED:
            pub = chip.genkey(slot)
            chip.lock_data()
        else:
            pub = chip.public_key(slot)
        return pub
    finally:
        chip.sleep()


class ATECC608Signer:
    """The Signer interface with the private key in an ATECC608 slot.

    Refuses (ATECCNotLockedError) a chip whose config or data zone is unlocked,
    and (ATECCConfigError) a slot that is not a P-256 private key.
    """

    software = False

    def __init__(self, chip, slot=0):
        self.chip = chip
        self.slot = _check_slot(slot)
        chip.wake()
        try:
            self.revision = chip.info()
            cfg = chip.read_config()
            chip.check_locked(cfg)
            if not slot_is_p256_private(cfg, slot):
                raise ATECCConfigError("slot %d is not a P-256 private key slot" % slot)
            self.device_id = chip.serial_number(cfg)
            self.public_key = chip.public_key(slot)
        finally:
            chip.sleep()
        self.signatures = 0
        self.errors = 0

    def sign_digest(self, digest):
        """64-byte r||s ECDSA signature of a 32-byte digest, computed in the chip.

        Wake, Nonce pass-through (digest -> TempKey), Sign external, sleep. A
        watchdog status, a lost wake or a comm failure restarts the whole
        sequence once (TempKey does not survive sleep).
        """
        if len(digest) != 32:
            self.errors += 1
            raise ValueError("digest must be 32 bytes")
        chip = self.chip
        for attempt in range(2):
            try:
                chip.wake()
                chip.nonce_load(digest)
                sig = chip.sign(self.slot)
                self.signatures += 1
                return sig
            except (ATECCWatchdogError, ATECCCommError, ATECCCRCError, ATECCNoResponseError, ATECCWakeError):
                self.errors += 1
                if attempt:
                    raise
            finally:
                chip.sleep()
