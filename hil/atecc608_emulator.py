"""An ATECC608 that answers the real I2C packets, for tests and the bench.

It sits behind the ``machine.I2C`` interface (``writeto``, ``readfrom_into``,
``scan``), so the firmware driver talks to it exactly as it talks to the chip,
on CPython (``machine.attach_i2c(0, ATECC608Emulator())``) and on MicroPython
under Node. MicroPython-clean: stdlib and firmware imports only.

Emulated (section numbers of the ATECC608A/B data sheets):

- Power states (6.2): asleep after power-up; a write to address 0x00 is the wake
  pulse (never acknowledged, raises OSError like a real bus); after wake the
  output buffer holds 04 11 33 43. Word addresses 0x00 reset (I/O pointer to
  0), 0x01 sleep (clears TempKey), 0x02 idle (keeps TempKey), 0x03 command.
  While asleep or idle the chip acknowledges nothing.
- Watchdog (6.2.3): ~1.3 s after wake the chip falls asleep; a command that
  would not finish in time answers 0xEE. Time is virtual: each command advances
  ``now_ms`` by its maximum execution time; ``advance_ms()`` moves it on.
- Busy: after a command the chip NACKs its address for ``busy_polls`` accesses
  (a counter, not a clock, so tests do not wait for 115 ms signatures).
- Packets (6.3): count check and CRC-16/0x8005 check (either failing gives status
  0xFF), parse errors (0x03) for unknown opcodes and bad params or lengths,
  execution errors (0x0F) for what the lock state or slot config forbids.
- Commands: Info (Revision, KeyValid), Read (config, OTP, data: private-key and
  secret slots refused), Write (config zone in clear, 4 or 32 bytes; bytes 0-15
  and 84-87 refused, as on the chip), Random (FF FF 00 00 pattern before the config lock),
  Nonce (random and pass-through, TempKey or message digest buffer), GenKey
  (private and public modes; the public-key digest modes are not emulated and
  answer 0x03), Sign (external from TempKey or the message digest buffer; TempKey
  is invalidated after Sign; internal mode needs GenDig data, which this emulator
  never produces, so it answers 0x0F), Lock (config, data, slot; summary CRC).
- ``blank=True`` (with ``provisioned=False``): a chip as it comes from the
  distributor, every slot plain data, waiting for its config to be written.
- Fault injection: ``inject_status``, ``corrupt_next_response``,
  ``corrupt_next_command``, ``nack_next``, ``advance_ms`` (watchdog),
  ``set_locked``.

The ECDSA is injected (``ecc=``): by default ``cryptography`` on CPython and the
firmware's ``secure_sign.p256`` on MicroPython. Private keys live in the slot
data and leave the emulator only through ``ecc`` calls, never over the bus.

Allocation accounting (for ``metanoia bench firmware``): on MicroPython every
bus call measures ``gc.mem_alloc()`` before and after its own handling and adds
the difference to ``alloc_bytes``; the bench subtracts it from the cycle total,
leaving what the driver allocated. The OSError raised for a NACK is created after
the measurement, so it is charged to the caller, as on a real bus where
``machine.I2C`` raises it. A negative difference means a garbage collection ran
inside the handler: it is counted in ``gc_during_handler`` (the measurement is
then unreliable; run the bench with a heap large enough and ``gc.collect()``
first). On CPython ``alloc_bytes`` stays 0. ``gc.mem_alloc()`` walks the heap
(about 0.7 ms per call with a 4 MB heap under Node), so ``track_alloc=False``
turns the accounting off where nobody reads it; it is on by default wherever
``gc.mem_alloc`` exists, so a bench cannot forget it.
"""

import hashlib

try:
    import gc

    _mem_alloc = gc.mem_alloc
    _HAVE_MEM_ALLOC = True
except (ImportError, AttributeError):
    _HAVE_MEM_ALLOC = False

    def _mem_alloc():
        return 0

_ENODEV = 19  # errno MicroPython's machine.I2C raises for a missing ACK

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

OP_READ = 0x02
OP_WRITE = 0x12
OP_NONCE = 0x16
OP_LOCK = 0x17
OP_RANDOM = 0x1B
OP_INFO = 0x30
OP_GENKEY = 0x40
OP_SIGN = 0x41

EXEC_MAX_MS = {OP_READ: 5, OP_WRITE: 45, OP_NONCE: 20, OP_LOCK: 35, OP_RANDOM: 23, OP_INFO: 5,
               OP_GENKEY: 115, OP_SIGN: 115}
WATCHDOG_MS = 1300

OK = 0x00
PARSE = 0x03
EXEC = 0x0F
WATCHDOG = 0xEE
COMM = 0xFF

SLOT_SIZES = (36, 36, 36, 36, 36, 36, 36, 36, 416, 72, 72, 72, 72, 72, 72, 72)

# Recommended production configuration (docs/secure-element.md): slot 0 holds
# the device key. SlotConfig 0x0081: IsSecret, external Sign only, WriteConfig 0
# (no GenKey/PrivWrite once the data zone is locked). KeyConfig 0x0013:
# Private, PubInfo, KeyType P-256. Other slots: plain data (KeyType 7).
SLOT0_CONFIG = 0x0081
SLOT0_KEY_CONFIG = 0x0013
DATA_SLOT_CONFIG = 0x0000
DATA_KEY_CONFIG = 0x001C


def crc16(data, start=0, end=None):
    """CRC-16/0x8005, bit by bit as the data sheet describes it (independent of
    the driver's table-driven version, so each checks the other)."""
    if end is None:
        end = len(data)
    crc = 0
    for i in range(start, end):
        byte = data[i]
        for b in range(8):
            data_bit = (byte >> b) & 1
            crc_bit = crc >> 15
            crc = (crc << 1) & 0xFFFF
            if data_bit != crc_bit:
                crc ^= 0x8005
    return crc


def default_config(serial, revision=b"\x00\x00\x60\x03", blank=False):
    """128 config bytes with our slot layout; zones unlocked (0x55). ``blank``:
    every slot plain data and ChipMode 0x01 (UserExtraAdd), as a chip arrives
    from the distributor before anyone has written its config zone."""
    cfg = bytearray(128)
    cfg[0:4] = serial[0:4]
    cfg[4:8] = revision
    cfg[8:13] = serial[4:9]
    cfg[14] = 0x01       # I2C_Enable
    cfg[16] = 0xC0       # I2C_Address (8-bit form of 0x60)
    cfg[19] = 0x00       # ChipMode: clock divider M0, short watchdog
    if blank:
        cfg[19] = 0x01
    for slot in range(16):
        sc = SLOT0_CONFIG if slot == 0 and not blank else DATA_SLOT_CONFIG
        kc = SLOT0_KEY_CONFIG if slot == 0 and not blank else DATA_KEY_CONFIG
        cfg[20 + 2 * slot] = sc & 0xFF
        cfg[21 + 2 * slot] = sc >> 8
        cfg[96 + 2 * slot] = kc & 0xFF
        cfg[97 + 2 * slot] = kc >> 8
    cfg[52:56] = b"\xff\xff\xff\xff"  # Counter0
    cfg[60:64] = b"\xff\xff\xff\xff"  # Counter1
    cfg[72] = 0xF0       # KdflvLoc
    cfg[86] = 0x55       # LockValue (data/OTP)
    cfg[87] = 0x55       # LockConfig
    cfg[88] = 0xFF       # SlotLocked: all unlocked
    cfg[89] = 0xFF
    return cfg


class SeededRandom:
    """Deterministic byte source (SHA-256 of seed || counter) for reproducible runs
    and for MicroPython builds without os.urandom."""

    def __init__(self, seed):
        self._seed = bytes(seed)
        self._n = 0

    def __call__(self, n):
        out = b""
        while len(out) < n:
            self._n += 1
            out += hashlib.sha256(self._seed + self._n.to_bytes(4, "big")).digest()
        return out[:n]


class CryptographyECC:
    """P-256 behind the emulator, on CPython, with ``cryptography``."""

    def _key(self, priv):
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.derive_private_key(int.from_bytes(priv, "big"), ec.SECP256R1())

    def public_key(self, priv):
        nums = self._key(priv).public_key().public_numbers()
        return nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")

    def sign(self, priv, digest):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        der = self._key(priv).sign(bytes(digest), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class SoftwareECC:
    """P-256 behind the emulator with the firmware's plain-Python arithmetic."""

    def public_key(self, priv):
        from secure_sign import p256

        return p256.public_key(int.from_bytes(priv, "big"))

    def sign(self, priv, digest):
        from secure_sign import p256

        r, s = p256.sign(int.from_bytes(priv, "big"), digest)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def default_ecc():
    import sys

    if sys.implementation.name == "micropython":
        return SoftwareECC()
    return CryptographyECC()


class ATECC608Emulator:
    """The chip on an I2C bus. ``provisioned=True`` gives a locked chip with a key
    in slot 0, as it leaves the factory step; ``False`` a blank, unlocked chip."""

    def __init__(self, address=0x60, serial=None, provisioned=True, ecc=None, rng=None,
                 seed=b"atecc608-emulator", busy_polls=1, revision=b"\x00\x00\x60\x03",
                 track_alloc=None, blank=False):
        if rng is None:
            rng = SeededRandom(seed)
        self.rng = rng
        self.ecc = ecc if ecc is not None else default_ecc()
        self.address = address
        if serial is None:
            r = rng(6)
            serial = b"\x01\x23" + r[0:2] + r[2:6] + b"\xee"
        self.serial = bytes(serial)
        self.config = default_config(self.serial, revision, blank and not provisioned)
        self.otp = bytearray(64)
        self.slots = [bytearray(n) for n in SLOT_SIZES]
        self.key_valid = [False] * 16
        self.busy_polls = busy_polls
        self.now_ms = 0
        self.state = "sleep"
        self._wake_ms = 0
        self._out = bytearray(75)
        self._out_len = 0
        self._ptr = 0
        self._busy = 0
        self._tempkey = bytearray(32)
        self._tempkey_valid = False
        self._msgdig = bytearray(32)
        self._msgdig_valid = False
        # fault injection
        self._inject_status = None
        self._corrupt_rsp = 0
        self._corrupt_cmd = 0
        self._nack = 0
        # accounting and observation
        self.track_alloc = _HAVE_MEM_ALLOC if track_alloc is None else track_alloc
        self.alloc_bytes = 0
        self.gc_during_handler = 0
        self.executed = {}        # opcode -> count of executed commands
        self.status_sent = {}     # status byte -> count of status responses
        self.wakes = 0
        self._dispatch = {OP_INFO: self._info, OP_READ: self._read_cmd, OP_WRITE: self._write_cmd,
                          OP_RANDOM: self._random,
                          OP_NONCE: self._nonce, OP_GENKEY: self._genkey, OP_SIGN: self._sign,
                          OP_LOCK: self._lock}
        if provisioned:
            self.config[87] = 0x00
            self._generate(0)
            self.config[86] = 0x00

    # -- fault injection and fixtures -----------------------------------------
    def inject_status(self, status):
        """The next command answers ``status`` instead of executing."""
        self._inject_status = status

    def corrupt_next_response(self, reads=1):
        """The next ``reads`` reads that carry a response's last CRC byte get it flipped."""
        self._corrupt_rsp = reads

    def corrupt_next_command(self, commands=1):
        """The next ``commands`` command packets arrive with a flipped bit (-> 0xFF)."""
        self._corrupt_cmd = commands

    def nack_next(self, accesses=1):
        """NACK the next ``accesses`` bus accesses to the chip's address."""
        self._nack = accesses

    def advance_ms(self, ms):
        """Move virtual time on (watchdog)."""
        self.now_ms += ms
        self._tick_watchdog()

    def set_locked(self, config=None, data=None):
        if config is not None:
            self.config[87] = 0x00 if config else 0x55
        if data is not None:
            self.config[86] = 0x00 if data else 0x55

    @property
    def tempkey_valid(self):
        return self._tempkey_valid

    # -- the I2C interface ----------------------------------------------------
    def scan(self):
        self._tick_watchdog()
        return [self.address] if self.state == "awake" else []

    def writeto(self, addr, buf, stop=True):
        a0 = _mem_alloc() if self.track_alloc else 0
        ack = self._write(addr, buf)
        if self.track_alloc:
            self._account(a0)
        if not ack:
            raise OSError(_ENODEV)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        a0 = _mem_alloc() if self.track_alloc else 0
        ack = self._read(addr, buf)
        if self.track_alloc:
            self._account(a0)
        if not ack:
            raise OSError(_ENODEV)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf, stop)
        return bytes(buf)

    def _account(self, a0):
        d = _mem_alloc() - a0
        if d < 0:
            self.gc_during_handler += 1
        else:
            self.alloc_bytes += d

    # -- bus behaviour --------------------------------------------------------
    def _tick_watchdog(self):
        if self.state == "awake" and self.now_ms - self._wake_ms >= WATCHDOG_MS:
            self._sleep()

    def _sleep(self):
        self.state = "sleep"
        self._tempkey_valid = False
        self._msgdig_valid = False
        self._busy = 0

    def _load(self, data, status=None):
        out = self._out
        if status is not None:
            out[0] = 4
            out[1] = status
            n = 4
            self.status_sent[status] = self.status_sent.get(status, 0) + 1
        else:
            n = len(data) + 3
            out[0] = n
            out[1:n - 2] = data
        crc = crc16(out, 0, n - 2)
        out[n - 2] = crc & 0xFF
        out[n - 1] = crc >> 8
        self._out_len = n
        self._ptr = 0

    def _write(self, addr, buf):
        if addr == 0x00:  # the wake pulse: SDA low long enough
            if self.state != "awake":
                self.state = "awake"
                self._wake_ms = self.now_ms
                self._busy = 0
                self.wakes += 1
                self._load(None, 0x11)
            return False  # nobody acknowledges address 0
        if not self._acknowledges(addr):
            return False
        if len(buf) == 0:
            return True
        wa = buf[0]
        if wa == 0x00:
            self._ptr = 0
        elif wa == 0x01:
            self._sleep()
        elif wa == 0x02:
            self.state = "idle"
        elif wa == 0x03:
            self._command(buf)
        else:
            return False  # reserved word address
        return True

    def _acknowledges(self, addr):
        """Whether the chip ACKs its address now: awake, not executing, no NACK injected."""
        if addr != self.address:
            return False
        self._tick_watchdog()
        if self.state != "awake":
            return False
        if self._nack:
            self._nack -= 1
            return False
        if self._busy:
            self._busy -= 1
            return False
        return True

    def _read(self, addr, buf):
        if not self._acknowledges(addr):
            return False
        n = len(buf)
        p = self._ptr
        end = self._out_len
        for i in range(n):
            buf[i] = self._out[p + i] if p + i < end else 0xFF
        if self._corrupt_rsp and p <= end - 1 < p + n:
            self._corrupt_rsp -= 1
            buf[end - 1 - p] ^= 0x5A
        self._ptr = p + n
        return True

    # -- command execution ----------------------------------------------------
    def _command(self, buf):
        pkt = bytearray(len(buf) - 1)
        for i in range(1, len(buf)):
            pkt[i - 1] = buf[i]
        if self._corrupt_cmd and len(pkt) > 2:
            self._corrupt_cmd -= 1
            pkt[2] ^= 0x01
        count = pkt[0] if len(pkt) else 0
        if count != len(pkt) or count < 3:
            return self._load(None, COMM)
        crc = crc16(pkt, 0, count - 2)
        if pkt[count - 2] != crc & 0xFF or pkt[count - 1] != crc >> 8:
            return self._load(None, COMM)
        if count < 7:
            return self._load(None, PARSE)
        opcode = pkt[1]
        p1 = pkt[2]
        p2 = pkt[3] | (pkt[4] << 8)
        data = pkt[5:count - 2]
        if self._inject_status is not None:
            status = self._inject_status
            self._inject_status = None
            return self._load(None, status)
        handler = self._dispatch.get(opcode)
        if handler is None:
            return self._load(None, PARSE)
        exec_ms = EXEC_MAX_MS[opcode]
        if self.now_ms + exec_ms - self._wake_ms > WATCHDOG_MS:
            return self._load(None, WATCHDOG)
        self.now_ms += exec_ms
        self._busy = self.busy_polls
        self.executed[opcode] = self.executed.get(opcode, 0) + 1
        result = handler(p1, p2, data)
        if isinstance(result, int):
            self._load(None, result)
        else:
            self._load(result)

    def _config_locked(self):
        return self.config[87] == 0x00

    def _data_locked(self):
        return self.config[86] == 0x00

    def _slot_config(self, slot):
        return self.config[20 + 2 * slot] | (self.config[21 + 2 * slot] << 8)

    def _key_config(self, slot):
        return self.config[96 + 2 * slot] | (self.config[97 + 2 * slot] << 8)

    def _is_p256_private(self, slot):
        kc = self._key_config(slot)
        return (kc & 0x01) == 1 and ((kc >> 2) & 0x07) == 4

    def _slot_locked(self, slot):
        return not ((self.config[88] | (self.config[89] << 8)) >> slot) & 1

    def _generate(self, slot):
        while True:
            priv = self.rng(32)
            if 0 < int.from_bytes(priv, "big") < N:
                break
        s = self.slots[slot]
        s[0:4] = b"\x00\x00\x00\x00"  # 4 pad bytes, then the 32-byte scalar
        s[4:36] = priv
        self.key_valid[slot] = True
        return self.ecc.public_key(priv)

    def _info(self, mode, p2, data):
        if len(data):
            return PARSE
        if mode == 0x00:
            return bytes(self.config[4:8])
        if mode == 0x01:
            if p2 > 15:
                return PARSE
            return bytes((1 if self.key_valid[p2] else 0, 0, 0, 0))
        return PARSE  # State/GPIO/VolatileKeyPermit: not emulated

    def _read_cmd(self, p1, p2, data):
        if len(data) or p1 & 0x7C:
            return PARSE
        zone = p1 & 0x03
        n = 32 if p1 & 0x80 else 4
        word = 0 if n == 32 else (p2 & 0x07)
        if zone == 0:
            block = (p2 >> 3) & 0x1F
            if block > 3 or p2 >> 8:
                return PARSE
            off = block * 32 + word * 4
            return bytes(self.config[off:off + n])
        if zone == 1:
            block = (p2 >> 3) & 0x1F
            if block > 1 or p2 >> 8:
                return PARSE
            if not self._data_locked():
                return EXEC
            off = block * 32 + word * 4
            return bytes(self.otp[off:off + n])
        if zone == 2:
            slot = (p2 >> 3) & 0x0F
            block = p2 >> 8
            off = block * 32 + word * 4
            if off + n > SLOT_SIZES[slot]:
                return PARSE
            if not self._data_locked():
                return EXEC  # data zone unreadable until locked
            if self._key_config(slot) & 0x01 or self._slot_config(slot) & 0x80:
                return EXEC  # private keys never, secrets not in clear
            return bytes(self.slots[slot][off:off + n])
        return PARSE

    def _write_cmd(self, p1, p2, data):
        """Write in clear to the config zone (section 11.18); data/OTP writes are not
        emulated. Bytes 0-15 never change; bytes 84-87 only through UpdateExtra/Lock."""
        if p1 & 0x7C:
            return PARSE
        zone = p1 & 0x03
        n = 32 if p1 & 0x80 else 4
        if zone != 0:
            return PARSE  # data and OTP writes: not emulated
        if len(data) != n or p2 >> 8:
            return PARSE
        block = (p2 >> 3) & 0x1F
        word = 0 if n == 32 else (p2 & 0x07)
        if block > 3:
            return PARSE
        if self._config_locked():
            return EXEC
        off = block * 32 + word * 4
        if off < 16 or off <= 84 < off + n:
            return EXEC
        self.config[off:off + n] = data
        return OK

    def _random(self, mode, p2, data):
        if len(data) or mode > 1 or p2:
            return PARSE
        if not self._config_locked():
            return b"\xff\xff\x00\x00" * 8
        return self.rng(32)

    def _nonce(self, mode, p2, data):
        sub = mode & 0x03
        if sub == 2 or mode & 0x1C or p2:
            return PARSE
        target = mode & 0xC0
        if target == 0xC0:
            return PARSE
        if sub == 3:
            if len(data) != (64 if mode & 0x20 else 32):
                return PARSE
            if target == 0x40:
                self._msgdig[:] = data[:32]
                self._msgdig_valid = True
            elif target == 0x00:
                self._tempkey[:] = data[:32]
                self._tempkey_valid = True
            return OK
        if len(data) != 20 or target:
            return PARSE
        rand = b"\xff\xff\x00\x00" * 8 if not self._config_locked() else self.rng(32)
        self._tempkey[:] = hashlib.sha256(rand + bytes(data) + bytes((0x16, mode, 0x00))).digest()
        self._tempkey_valid = True
        return rand

    def _genkey(self, mode, slot, data):
        if mode & ~0x1C or slot > 15 or len(data) not in (0, 3):
            return PARSE
        if mode & 0x18:
            return PARSE  # public-key digest modes: not emulated
        if not self._config_locked() or not self._is_p256_private(slot):
            return EXEC
        if mode & 0x04:
            if self._data_locked():
                write_config = self._slot_config(slot) >> 12
                if not write_config & 0x2 or self._slot_locked(slot):
                    return EXEC
            return self._generate(slot)
        if not self.key_valid[slot]:
            return EXEC
        return self.ecc.public_key(bytes(self.slots[slot][4:36]))

    def _sign(self, mode, slot, data):
        if mode & ~0xE1 or slot > 15 or len(data):
            return PARSE
        if not (self._config_locked() and self._data_locked()):
            return EXEC
        if not mode & 0x80:
            return EXEC  # internal sign needs GenDig/GenKey TempKey data
        if mode & 0x20:
            valid, msg = self._msgdig_valid, self._msgdig
        else:
            valid, msg = self._tempkey_valid, self._tempkey
        if not valid:
            return EXEC
        if not self._is_p256_private(slot) or not self.key_valid[slot]:
            return EXEC
        if not self._slot_config(slot) & 0x01:
            return EXEC  # ReadKey bit 0: external signatures not enabled
        sig = self.ecc.sign(bytes(self.slots[slot][4:36]), bytes(msg))
        self._tempkey_valid = False
        self._msgdig_valid = False
        return sig

    def _lock(self, mode, summary, data):
        if len(data) or mode & 0x40:
            return PARSE
        zone = mode & 0x03
        check = not mode & 0x80
        if zone == 0:
            if self._config_locked():
                return EXEC
            if check and crc16(self.config) != summary:
                return EXEC
            self.config[87] = 0x00
            return OK
        if zone == 1:
            if not self._config_locked() or self._data_locked():
                return EXEC
            if check:
                blob = bytearray()
                for s in self.slots:
                    blob += s
                blob += self.otp
                if crc16(blob) != summary:
                    return EXEC
            self.config[86] = 0x00
            return OK
        if zone == 2:
            slot = (mode >> 2) & 0x0F
            if not self._data_locked() or self._slot_locked(slot) or not self._key_config(slot) & 0x20:
                return EXEC
            if check and crc16(self.slots[slot]) != summary:
                return EXEC
            bit = 1 << slot
            self.config[88] &= ~bit & 0xFF
            self.config[89] &= ~(bit >> 8) & 0xFF
            return OK
        return PARSE
