"""The flash ring buffer on real MicroPython 1.27 (WebAssembly under Node).

Same firmware module, same NOR model (hil/nor_flash.py) as the CPython tests;
the checks run inside MicroPython (an assert there fails the test with
MicroPython's traceback) and report what they covered as a JSON line.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.micropython

HARNESS = r"""
import json, gc
from nor_flash import NorFlash, PowerCut
from storage.ring_buffer import RingBuffer

BIG = 1 << 30

def payload(seq, size=134):
    b = bytearray(size)
    for i in range(size):
        b[i] = (seq * 31 + i * 7) & 0xFF
    return bytes(b)

def fill(rb, k, size=134):
    out = []
    for _ in range(k):
        s = rb.next_seq
        rb.append(s, payload(s, size))
        out.append((s, payload(s, size)))
    return out

def boot(f, **kw):
    f.power_on()
    return RingBuffer(f, **kw)

def check_after_cut(f, before, acked, seq, data, may_drop):
    rb = boot(f)
    got = rb.pending(BIG, BIG)
    present = len(got) > 0 and got[-1] == (seq, data)
    old = got[:-1] if present else got
    assert old == before[len(before) - len(old):], "committed record lost or garbage"
    assert len(before) - len(old) in (0, may_drop), "unexpected drop"
    assert rb.next_seq == (seq + 1 if present else seq), "seq"
    assert rb.acked_seq == acked, "ack"
    s = rb.next_seq
    rb.append(s, payload(s, 50))
    assert boot(f).pending(BIG, BIG) == got + [(s, payload(s, 50))], "after re-append"
    return present
"""


def run_mp(mp, body: str, heap: int = 8 * 1024 * 1024) -> dict:
    res = mp(HARNESS + body, heap=heap, files={})
    return json.loads(res.lines()[-1])


STATE = r"""
BS = 1024
PER = (BS - 24) // 152  # 6 readings per 1 KB sector

def state(kind):
    f = NorFlash(4, BS)
    rb = RingBuffer(f)
    k, a = {"fits": (8, 2), "fresh": (2 * PER, 3), "recycle_acked": (4 * PER, PER + 2),
            "recycle_unacked": (4 * PER, 0)}[kind]
    recs = fill(rb, k - 1)
    if a:
        rb.ack(a)
    recs += fill(rb, 1)
    return f, [r for r in recs if r[0] > a], a
"""


@pytest.mark.parametrize("scribble", [False, True])
def test_power_cut_at_every_byte_of_the_last_append_on_micropython(mp, scribble):
    out = run_mp(mp, STATE + f"""
summary = {{}}
for kind in ("fits", "fresh", "recycle_acked", "recycle_unacked"):
    base, before, acked = state(kind)
    seq = before[-1][0] + 1
    data = payload(seq)
    probe = base.copy()
    RingBuffer(probe).append(seq, data)
    total = probe.bytes_programmed - base.bytes_programmed
    may_drop = PER if kind == "recycle_unacked" else 0
    present = []
    for cut in range(total + 1):
        f = base.copy()
        rb = RingBuffer(f)
        f.cut_after(cut, {scribble})
        try:
            rb.append(seq, data)
            raise AssertionError("no power cut")
        except PowerCut:
            pass
        present.append(check_after_cut(f, before, acked, seq, data, may_drop))
    assert present[-1] and not any(present[:total - 4])
    summary[kind] = [total, len(present), sum(present)]
print(json.dumps(summary))
""")
    # every byte offset of header + record was cut (a sector opens except in "fits")
    assert out["fits"][:2] == [152, 153]
    for kind in ("fresh", "recycle_acked", "recycle_unacked"):
        assert out[kind][:2] == [176, 177]
    for total, _, present in out.values():
        assert 1 <= present <= 3  # only cuts inside the CRC/padding can leave it whole


def test_power_cut_during_erase_and_ack_on_micropython(mp):
    out = run_mp(mp, STATE + """
erase_cases = 0
for kind in ("recycle_acked", "recycle_unacked"):
    base, before, acked = state(kind)
    seq = before[-1][0] + 1
    for scribble in (False, True):
        for keep in (0, 8, 20, 24, 100, 500, 1020):
            f = base.copy()
            rb = RingBuffer(f)
            f.cut_erase(keep, scribble)
            try:
                rb.append(seq, payload(seq))
                raise AssertionError("no power cut")
            except PowerCut:
                pass
            assert not check_after_cut(f, before, acked, seq, payload(seq), PER if kind == "recycle_unacked" else 0)
            erase_cases += 1
base = NorFlash(4, BS)
rb = RingBuffer(base, ack_lag=4)
recs = fill(rb, 10)
ack_cases = 0
for scribble in (False, True):
    for cut in range(17):
        f = base.copy()
        r = RingBuffer(f, ack_lag=4)
        f.cut_after(cut, scribble)
        try:
            r.ack(7)
            raise AssertionError("no power cut")
        except PowerCut:
            pass
        r2 = boot(f, ack_lag=4)
        assert r2.acked_seq == (7 if cut == 16 else 0)
        assert r2.pending(BIG, BIG) == recs[r2.acked_seq:]
        ack_cases += 1
print(json.dumps({"erase_cases": erase_cases, "ack_cases": ack_cases}))
""")
    assert out == {"erase_cases": 28, "ack_cases": 34}


def test_wraparound_drops_and_seq_survive_reboot_on_micropython(mp):
    out = run_mp(mp, """
f = NorFlash(4, 4096)
rb = RingBuffer(f)
recs = fill(rb, 4 * 26 + 10)
s = rb.stats()
got = rb.pending(BIG, BIG)
assert got == recs[26:] and s["dropped"] == 26 and s["pending"] == len(got)
assert boot(f).pending(BIG, BIG) == got
f = NorFlash(3, 4096)
rb = RingBuffer(f)
for _ in range(7 * 26 + 5):
    fill(rb, 1)
    rb.ack(rb.next_seq - 1)
n = rb.next_seq
rb2 = boot(f)
assert rb2.next_seq == n and rb2.acked_seq == n - 2
f = NorFlash(64, 4096)
rb = RingBuffer(f)
for _ in range(1000):
    fill(rb, 1)
    rb.ack(rb.next_seq - 1)
print(json.dumps({"next_seq": n, "erases_per_1000": rb.stats()["erases"], "wear": [min(f.erases), max(f.erases)]}))
""")
    assert out["next_seq"] == 7 * 26 + 6
    assert out["erases_per_1000"] == 39 and out["wear"][1] - out["wear"][0] <= 1


def test_file_backed_flash_persists_on_micropython(mp):
    out = run_mp(mp, """
f = NorFlash(4, 1024, path="/dev7.flash")
rb = RingBuffer(f)
recs = fill(rb, 9)
f.close()
f = NorFlash(4, 1024, path="/dev7.flash")
rb = RingBuffer(f)
assert rb.pending(BIG, BIG) == recs
print(json.dumps({"next_seq": rb.next_seq}))
""")
    assert out == {"next_seq": 10}


def test_bytes_allocated_per_append_on_micropython(mp):
    """gc.mem_alloc deltas with gc disabled, on a RAM device that itself allocates nothing."""
    out = run_mp(mp, """
class RamFlash:
    # NOR semantics, no allocation: lets us measure only the ring buffer
    def __init__(self, n, bs):
        self.n = n
        self.bs = bs
        self.mem = bytearray(b"\\xff" * (n * bs))
    def readblocks(self, b, buf, off=0):
        a = b * self.bs + off
        m = self.mem
        for i in range(len(buf)):
            buf[i] = m[a + i]
    def writeblocks(self, b, buf, off=0):
        a = b * self.bs + off
        m = self.mem
        for i in range(len(buf)):
            m[a + i] &= buf[i]
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            m = self.mem
            for i in range(arg * self.bs, (arg + 1) * self.bs):
                m[i] = 0xFF
            return 0

def measure():
    # inside a function: no global-dict growth in the measured windows
    dev = RamFlash(8, 4096)
    buf = bytearray(152)
    gc.collect()
    gc.disable()
    m0 = gc.mem_alloc()
    dev.readblocks(1, buf, 40)
    dev.writeblocks(1, buf, 40)
    dev.ioctl(6, 2)
    dev_alloc = gc.mem_alloc() - m0
    gc.enable()
    rb = RingBuffer(RamFlash(8, 4096))
    msg = payload(1)
    per = []
    for k in range(200):
        s = rb.next_seq
        gc.collect()
        gc.disable()
        m0 = gc.mem_alloc()
        rb.append(s, msg)
        m1 = gc.mem_alloc()
        gc.enable()
        per.append(m1 - m0)
        if k % 3 == 2 and s > 20:
            rb.ack(s - 20)  # a backlog of 20 stays
    rb.pending(8, 1200)
    rb.ack(rb.acked_seq + 8)  # steady drain: the previous batch was acked
    gc.collect()
    gc.disable()
    m0 = gc.mem_alloc()
    batch = rb.pending(8, 1200)
    pend = gc.mem_alloc() - m0
    m0 = gc.mem_alloc()
    rb.pending(1, 1200)
    pend1 = gc.mem_alloc() - m0
    m0 = gc.mem_alloc()
    rb.ack(rb.acked_seq + 1)
    ack = gc.mem_alloc() - m0
    gc.enable()
    per.sort()
    return dev_alloc, per, pend, pend1, batch, ack

dev_alloc, per, pend, pend1, batch, ack = measure()
print(json.dumps({"dev_alloc": dev_alloc, "append_median": per[len(per) // 2], "append_max": per[-1],
                  "pending8": pend, "pending1": pend1, "batch": len(batch), "ack": ack}))
""")
    print("alloc on MicroPython:", out)
    assert out["dev_alloc"] == 0  # the measuring device adds nothing
    assert out["batch"] == 8
    assert out["append_median"] <= 256  # a record write: a few small views and a CRC int
    assert out["append_max"] <= 1024    # opening a sector (erase + header) included
    # pending: per returned reading a fresh bytes payload (~150 B) plus a tuple and views
    assert out["pending1"] <= 400 and out["pending8"] <= 8 * 400
    assert out["ack"] == 0  # an ack below ack_lag touches neither flash nor heap
