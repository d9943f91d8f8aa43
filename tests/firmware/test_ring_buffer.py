"""Flash ring buffer (firmware/storage/ring_buffer.py) on the NOR flash model, CPython.

The same firmware module runs on MicroPython in test_ring_buffer_micropython.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hil.nor_flash import NorFlash, PowerCut
from storage.ring_buffer import RingBuffer

ALL = (10**9, 10**9)
SIZE = 134  # one signed reading, worst case (DESIGN.md)
REC = (12 + SIZE + 4 + 3) & ~3  # 152 bytes on flash
PER_SECTOR = (4096 - 24) // REC  # 26


def payload(seq: int, size: int = SIZE) -> bytes:
    return bytes((seq * 31 + i * 7) & 0xFF for i in range(size))


def fill(rb: RingBuffer, k: int, size: int = SIZE) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(k):
        s = rb.next_seq
        rb.append(s, payload(s, size))
        out.append((s, payload(s, size)))
    return out


def reboot(flash: NorFlash, **kw) -> RingBuffer:
    flash.power_on()
    return RingBuffer(flash, **kw)


# -- the NOR model itself ------------------------------------------------------

def test_nor_write_only_clears_bits_and_erase_sets_ff_and_counts():
    f = NorFlash(2, 256)
    f.writeblocks(0, b"\x0f\xf0", 0)
    f.writeblocks(0, b"\xf3\x3f", 0)
    buf = bytearray(3)
    f.readblocks(0, buf, 0)
    assert bytes(buf) == b"\x03\x30\xff"
    assert f.ioctl(4, 0) == 2 and f.ioctl(5, 0) == 256
    f.ioctl(6, 0)
    f.readblocks(0, buf, 0)
    assert bytes(buf) == b"\xff\xff\xff" and f.erases == [1, 0]


def test_nor_cut_programs_exactly_n_bytes_then_stays_dead_until_power_on():
    f = NorFlash(1, 256)
    f.cut_after(3)
    with pytest.raises(PowerCut):
        f.writeblocks(0, b"\x00" * 8, 10)
    with pytest.raises(PowerCut):
        f.readblocks(0, bytearray(1), 0)
    f.power_on()
    buf = bytearray(8)
    f.readblocks(0, buf, 10)
    assert bytes(buf) == b"\x00" * 3 + b"\xff" * 5


def test_nor_cut_erase_leaves_part_of_the_block_unerased():
    f = NorFlash(1, 256)
    f.writeblocks(0, b"\x00" * 256, 0)
    f.cut_erase(100)
    with pytest.raises(PowerCut):
        f.ioctl(6, 0)
    f.power_on()
    buf = bytearray(256)
    f.readblocks(0, buf, 0)
    assert bytes(buf) == b"\xff" * 100 + b"\x00" * 156


# -- basics --------------------------------------------------------------------

def test_blank_flash_starts_at_seq_1_with_nothing_pending():
    rb = RingBuffer(NorFlash(4))
    assert rb.next_seq == 1 and rb.pending() == []
    s = rb.stats()
    assert s["pending"] == 0 and s["acked_seq"] == 0 and s["corrupt_skipped"] == 0


def test_append_requires_next_seq_and_bounded_payload():
    rb = RingBuffer(NorFlash(4), max_payload=160)
    with pytest.raises(ValueError):
        rb.append(2, b"x")
    with pytest.raises(ValueError):
        rb.append(1, b"x" * 161)
    rb.append(1, b"x" * 160)
    assert rb.next_seq == 2


def test_records_ack_and_seq_survive_reboot_in_order():
    f = NorFlash(6)
    rb = RingBuffer(f)
    recs = fill(rb, 60)
    rb.ack(20)
    rb.append(61, payload(61))  # carries ack 20 to flash
    recs.append((61, payload(61)))
    rb2 = reboot(f)
    assert rb2.next_seq == 62 and rb2.acked_seq == 20
    assert rb2.pending(*ALL) == recs[20:]
    assert rb2.stats()["pending"] == 41


def test_ack_rejects_seq_that_was_never_committed():
    rb = RingBuffer(NorFlash(4))
    fill(rb, 3)
    with pytest.raises(ValueError):
        rb.ack(4)
    rb.ack(2)
    rb.ack(1)  # an old ack is a no-op
    assert rb.acked_seq == 2 and [s for s, _ in rb.pending()] == [3]


def test_pending_respects_count_and_byte_limits_oldest_first():
    rb = RingBuffer(NorFlash(6))
    recs = fill(rb, 40)
    assert rb.pending(5, 10**6) == recs[:5]
    got = rb.pending(100, 3 * SIZE + SIZE // 2)
    assert got == recs[:3]
    assert rb.pending(100, SIZE - 1) == []
    rb.ack(10)
    assert rb.pending(4, 10**6) == recs[10:14]
    # batches drain the backlog in order without gaps
    seen = []
    while True:
        batch = rb.pending(7, 1000)
        if not batch:
            break
        seen += batch
        rb.ack(batch[-1][0])
    assert seen == recs[10:] and rb.stats()["pending"] == 0


def test_ring_stays_inside_its_blocks_and_takes_memoryview_payloads():
    f = NorFlash(6)
    rb = RingBuffer(f, first_block=2, num_blocks=3)
    for k in range(3 * PER_SECTOR + 3):
        s = rb.next_seq
        rb.append(s, memoryview(bytearray(payload(s))))
    assert f.erases == [0, 0, 2, 1, 1, 0]  # wrapped within blocks 2..4 only
    assert all(b == 0xFF for b in f.mem[:2 * 4096]) and all(b == 0xFF for b in f.mem[5 * 4096:])
    got = RingBuffer(f, first_block=2, num_blocks=3).pending(*ALL)
    assert got[0][0] == PER_SECTOR + 1 and got[-1] == (s, payload(s)) and isinstance(got[0][1], bytes)


# -- wrap-around, drops, wear ----------------------------------------------------

def test_full_ring_recycles_oldest_sector_and_counts_dropped():
    f = NorFlash(4)
    rb = RingBuffer(f)
    recs = fill(rb, 4 * PER_SECTOR + 10)  # 4 sectors hold 104; the 105th recycles
    s = rb.stats()
    got = rb.pending(*ALL)
    assert s["dropped"] == PER_SECTOR and s["pending"] == len(got)
    assert got == recs[PER_SECTOR:]  # newest kept, oldest sector gone, no gap inside
    assert reboot(f).pending(*ALL) == got


def test_acked_sectors_are_recycled_without_drops():
    f = NorFlash(4)
    rb = RingBuffer(f)
    for _ in range(10 * PER_SECTOR):
        fill(rb, 1)
        rb.ack(rb.next_seq - 1)
    assert rb.stats()["dropped"] == 0 and rb.stats()["pending"] == 0


def test_seq_and_ack_survive_reboot_after_everything_was_acked_and_recycled():
    f = NorFlash(3)
    rb = RingBuffer(f)
    for _ in range(7 * PER_SECTOR + 5):
        fill(rb, 1)
        rb.ack(rb.next_seq - 1)
    n = rb.next_seq
    assert min(f.erases) >= 2  # every sector was recycled at least once
    rb2 = reboot(f)
    assert rb2.next_seq == n
    # the last ack rode on no append (below ack_lag): lost, so one reading is re-sent
    assert rb2.acked_seq == n - 2 and rb2.pending(*ALL) == [(n - 1, payload(n - 1))]
    rb2.append(n, payload(n))
    assert reboot(f).next_seq == n + 1


def test_wear_erases_per_1000_readings_are_bounded():
    f = NorFlash(64)
    rb = RingBuffer(f)
    for _ in range(1000):
        fill(rb, 1)
        rb.ack(rb.next_seq - 1)  # live operation: ack after every publish
    s = rb.stats()
    bound = math.ceil(1000 / PER_SECTOR)  # 39: one erase per 26 readings, no extra
    assert s["erases"] == sum(f.erases) == bound
    assert s["writes"] == 1000 + bound  # one record write per reading, one header per sector
    assert max(f.erases) - min(f.erases) <= 1  # sectors used in a cycle


def test_wear_backlog_drain_costs_few_ack_records():
    f = NorFlash(64)
    rb = RingBuffer(f, ack_lag=8)
    fill(rb, 1000)  # an outage: nothing acked
    e0, w0 = rb.stats()["erases"], rb.stats()["writes"]
    while True:
        batch = rb.pending(10, 1600)
        if not batch:
            break
        rb.ack(batch[-1][0])
    s = rb.stats()
    assert s["writes"] - w0 == 100  # one 16-byte ack marker per batch of 10 (lag 10 >= 8)
    assert s["erases"] - e0 <= 1
    assert reboot(f).acked_seq == 1000


def test_ack_lag_bounds_resend_after_power_loss():
    f = NorFlash(8)
    rb = RingBuffer(f, ack_lag=8)
    fill(rb, 100)
    for s in range(1, 101):
        rb.ack(s)
        assert reboot(f.copy(), ack_lag=8).acked_seq > s - 8


# -- power cuts ------------------------------------------------------------------

def _state(kind: str) -> tuple[NorFlash, list, int]:
    """Flash where the next append fits / opens a fresh sector / recycles an acked or unacked one."""
    f = NorFlash(4)
    rb = RingBuffer(f)
    k, a = {"fits": (30, 5), "fresh": (2 * PER_SECTOR, 3), "recycle_acked": (4 * PER_SECTOR, PER_SECTOR + 2),
            "recycle_unacked": (4 * PER_SECTOR, 0)}[kind]  # unacked: the ring is full, oldest sector dropped
    recs = fill(rb, k - 1)
    if a:
        rb.ack(a)
    recs += fill(rb, 1)  # carries the ack to flash
    return f, [r for r in recs if r[0] > a], a


def _check_after_cut(f: NorFlash, before: list, acked: int, seq: int, data: bytes, may_drop: int):
    rb = reboot(f)
    got = rb.pending(*ALL)
    new = (seq, data)
    torn_present = bool(got) and got[-1] == new
    old = got[:-1] if torn_present else got
    # every committed record intact and in order; only the oldest sector may be gone
    assert old == before[len(before) - len(old):]
    assert len(before) - len(old) in {0, may_drop}
    assert rb.next_seq == (seq + 1 if torn_present else seq)
    assert rb.acked_seq == acked
    # the next append works and does not reuse a committed seq; a reboot keeps all
    s = rb.next_seq
    rb.append(s, payload(s, 50))
    assert reboot(f).pending(*ALL) == got + [(s, payload(s, 50))]
    return torn_present


@pytest.mark.parametrize("kind", ["fits", "fresh", "recycle_acked", "recycle_unacked"])
@pytest.mark.parametrize("scribble", [False, True])
def test_power_cut_at_every_byte_of_the_last_append(kind, scribble):
    base, before, acked = _state(kind)
    seq = before[-1][0] + 1
    data = payload(seq)
    probe = base.copy()
    RingBuffer(probe).append(seq, data)
    total = probe.bytes_programmed - base.bytes_programmed  # header (if a sector opens) + record
    assert total == REC + (24 if kind != "fits" else 0)
    may_drop = PER_SECTOR if kind == "recycle_unacked" else 0
    present = []
    for cut in range(total + 1):
        f = base.copy()
        rb = RingBuffer(f)
        f.cut_after(cut, scribble)
        with pytest.raises(PowerCut):
            rb.append(seq, data)
        present.append(_check_after_cut(f, before, acked, seq, data, may_drop))
    assert present[-1] is True  # the whole write made it: committed
    assert not any(present[:total - 4])  # a record missing more than its CRC is never there


@pytest.mark.parametrize("scribble", [False, True])
def test_power_cut_during_sector_erase(scribble):
    for kind in ("recycle_acked", "recycle_unacked"):
        base, before, acked = _state(kind)
        seq = before[-1][0] + 1
        may_drop = PER_SECTOR if kind == "recycle_unacked" else 0
        for keep in list(range(0, 64, 4)) + list(range(64, 4097, 509)):
            f = base.copy()
            rb = RingBuffer(f)
            f.cut_erase(keep, scribble)
            with pytest.raises(PowerCut):
                rb.append(seq, payload(seq))
            assert _check_after_cut(f, before, acked, seq, payload(seq), may_drop) is False


@pytest.mark.parametrize("scribble", [False, True])
def test_power_cut_at_every_byte_of_an_ack_record(scribble):
    base = NorFlash(4)
    rb = RingBuffer(base, ack_lag=4)
    recs = fill(rb, 30)
    rb.ack(2)  # below the lag: RAM only
    probe = base.copy()
    RingBuffer(probe, ack_lag=4).ack(20)
    total = probe.bytes_programmed - base.bytes_programmed
    assert total == 16
    for cut in range(total + 1):
        f = base.copy()
        r = RingBuffer(f, ack_lag=4)
        f.cut_after(cut, scribble)
        with pytest.raises(PowerCut):
            r.ack(20)
        r2 = reboot(f, ack_lag=4)
        assert r2.acked_seq in (0, 20) and (r2.acked_seq == 20) == (cut == total)
        assert r2.pending(*ALL) == recs[r2.acked_seq:]
        r2.append(31, payload(31))
        assert reboot(f).pending(*ALL) == recs[r2.acked_seq:] + [(31, payload(31))]


# -- corruption ------------------------------------------------------------------

def test_bit_flip_in_a_committed_record_skips_only_that_record():
    f = NorFlash(4)
    rb = RingBuffer(f)
    recs = fill(rb, 40)
    # record index 5 sits in sector 0 at 24 + 5 * REC; flip a payload byte
    f.mem[24 + 5 * REC + 40] ^= 0x10
    rb2 = reboot(f)
    assert rb2.pending(*ALL) == recs[:5] + recs[6:]
    assert rb2.stats()["corrupt_skipped"] == 1 and rb2.next_seq == 41
    # the same damage found after boot is skipped, counted once
    rb3 = reboot(f)
    f.mem[24 + 9 * REC + 2] ^= 0x01  # length field of record 10
    assert rb3.pending(*ALL) == recs[:5] + recs[6:9] + recs[10:]
    rb3.pending(*ALL)
    assert rb3.stats()["corrupt_skipped"] == 2


def test_damaged_head_sector_header_never_lets_a_committed_seq_be_reused():
    f = NorFlash(4)
    rb = RingBuffer(f)
    recs = fill(rb, 40)  # sector 1 is the head with 14 records
    f.mem[4096 + 5] ^= 0xFF  # its header's sector seq
    rb2 = reboot(f)
    assert rb2.pending(*ALL) == recs[:PER_SECTOR]
    assert rb2.next_seq == 41 and rb2.stats()["corrupt_skipped"] >= 1
    rb2.append(41, payload(41))
    assert reboot(f).pending(*ALL)[-1] == (41, payload(41))


def test_random_garbage_flash_is_recovered_without_returning_garbage():
    import random

    rnd = random.Random(7)
    f = NorFlash(4)
    f.mem[:] = bytes(rnd.getrandbits(8) for _ in range(len(f.mem)))
    rb = RingBuffer(f)
    assert rb.pending(*ALL) == [] and rb.next_seq == 1
    assert rb.stats()["corrupt_skipped"] == 4
    recs = fill(rb, 30)
    assert reboot(f).pending(*ALL) == recs


# -- random operation sequences against a model ------------------------------------

class RingMachine(RuleBasedStateMachine):
    """append / ack / reboot / power cuts (torn writes, scribbles, cut erases) vs a model."""

    def __init__(self):
        super().__init__()
        self.flash = NorFlash(4, 512)
        self.rb = RingBuffer(self.flash, max_payload=160, ack_lag=3)
        self.recs: list[tuple[int, bytes]] = []  # model: committed and not known to be dropped
        self.pend: list[tuple[int, bytes]] = []  # what pending() returned last
        self.committed_max = 0
        self.acked = 0
        self.ack_on_flash = 0  # lower bound of what a reboot must find

    def _sync(self, torn=None):
        got = self.rb.pending(*ALL)
        if torn is not None and got and got[-1] == torn:
            self.recs.append(torn)  # the cut came after the last byte that mattered
            self.committed_max = torn[0]
        a = self.rb.acked_seq
        assert self.ack_on_flash <= a <= self.acked
        self.acked = a
        model = [r for r in self.recs if r[0] > a]
        # nothing but committed records, oldest first; only the oldest may be dropped
        assert len(got) <= len(model) and got == model[len(model) - len(got):]
        self.recs = [r for r in self.recs if r[0] <= a] + got
        self.pend = got
        assert self.rb.next_seq == self.committed_max + 1

    def _append(self, size, cut=None, scribble=False, erase_keep=None):
        seq = self.rb.next_seq
        data = payload(seq, size)
        if cut is not None:
            self.flash.cut_after(cut, scribble)
        if erase_keep is not None:
            self.flash.cut_erase(erase_keep, scribble)
        try:
            self.rb.append(seq, data)
        except PowerCut:
            self.rb = reboot(self.flash, max_payload=160, ack_lag=3)
            self._sync(torn=(seq, data))
            return
        self.flash.disarm()
        self.recs.append((seq, data))
        self.committed_max = seq
        self.ack_on_flash = self.acked
        self._sync()
        assert self.pend[-1] == (seq, data)

    @rule(size=st.integers(0, 160))
    def append(self, size):
        self._append(size)

    @rule(size=st.integers(0, 160), cut=st.integers(0, 200), scribble=st.booleans())
    def append_power_cut(self, size, cut, scribble):
        self._append(size, cut=cut, scribble=scribble)

    @rule(size=st.integers(0, 160), keep=st.integers(0, 512), scribble=st.booleans())
    def append_erase_cut(self, size, keep, scribble):
        self._append(size, erase_keep=keep, scribble=scribble)

    @precondition(lambda self: self.committed_max > self.acked)
    @rule(data=st.data(), cut=st.one_of(st.none(), st.integers(0, 16)))
    def ack(self, data, cut):
        seq = data.draw(st.integers(self.acked + 1, self.committed_max))
        if cut is not None:
            self.flash.cut_after(cut)
        try:
            self.rb.ack(seq)
        except PowerCut:
            self.acked = seq  # the reboot may find it or an older persisted ack
            self.rb = reboot(self.flash, max_payload=160, ack_lag=3)
            self._sync()
            return
        self.flash.disarm()
        self.acked = seq
        self._sync()

    @rule()
    def reboot(self):
        self.rb = reboot(self.flash, max_payload=160, ack_lag=3)
        self._sync()

    @invariant()
    def counters_consistent(self):
        s = self.rb.stats()
        assert s["pending"] == len(self.pend)
        assert s["acked_seq"] == self.rb.acked_seq


RingMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_ring_buffer_state_machine = RingMachine.TestCase


# -- esp32 host shim -------------------------------------------------------------

def test_esp32_partition_shim_keeps_readings_across_process_restarts(tmp_path):
    root = Path(__file__).resolve().parents[2]
    image = tmp_path / "dev.flash"
    code = f"""
import sys
sys.path.insert(0, {str(root)!r})
from hil import firmware_host
firmware_host.install()
import esp32
from storage.ring_buffer import RingBuffer
esp32.attach_flash("readings", path={str(image)!r}, size=64 * 1024)
part = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="readings")[0]
rb = RingBuffer(part)
print(rb.next_seq, len(rb.pending(100, 10**6)))
rb.append(rb.next_seq, b"r" * 134)
"""
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=str(root)).stdout.split() for _ in range(3)]
    assert outs == [["1", "0"], ["2", "1"], ["3", "2"]]
    assert image.stat().st_size == 64 * 1024


def test_esp32_partition_shim_find_and_block_protocol():
    import esp32

    esp32.attach_flash("t_shim", size=16 * 1024)
    try:
        (p,) = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="t_shim")
        assert esp32.Partition.find(esp32.Partition.TYPE_DATA, label="nope") == []
        assert p.ioctl(4, 0) == 4 and p.ioctl(5, 0) == 4096 and p.info()[3] == 16 * 1024
        p.writeblocks(1, b"\x00\x01", 10)
        buf = bytearray(3)
        p.readblocks(1, buf, 10)
        assert bytes(buf) == b"\x00\x01\xff"
        p.writeblocks(1, b"\xaa" * 4096)  # basic interface: erase, then write
        p.readblocks(1, buf, 10)
        assert bytes(buf) == b"\xaa\xaa\xaa"
    finally:
        esp32.detach_flash("t_shim")
