# Flash ring buffer: signed readings stay on flash until the gateway acks them.
#
# A log of CRC-protected records in erase blocks ("sectors") of a raw NOR
# partition (esp32.Partition: readblocks/writeblocks with offset, ioctl 4/5/6).
# The byte layout, commit protocol, recovery and wear figures are in
# docs/ring-buffer.md; in short:
#
#   sector = header(24) + records, written in order, never rewritten;
#   header = magic "MRB1", sector seq, base seq, acked seq, erase count, CRC32
#   record = tag, ~tag, len, seq, acked seq, payload, CRC32, zero pad to 4
#
# A record is committed when its single write returned: a torn one fails its
# CRC, is ignored at boot, and the sector is closed (never programmed over).
# Sectors are used in a cycle; a new one is opened (erased, then its header
# written) only when the current one is full, so the newest header always
# survives and keeps next_seq/acked even after every reading was recycled.

import struct
from binascii import crc32
from micropython import const

_MAGIC = const(0x3142524D)  # b"MRB1" little-endian
_SH = const(24)             # sector header size
_RH = const(12)             # record header size
_T_READ = const(0x52)       # "R": a signed reading
_T_ACK = const(0x41)        # "A": ack marker, seq field = acked seq


class RingBuffer:
    def __init__(self, dev, first_block=0, num_blocks=None, max_payload=512, ack_lag=8):
        self._dev = dev
        self._first = first_block
        bs = dev.ioctl(5, 0)
        n = num_blocks if num_blocks is not None else dev.ioctl(4, 0) - first_block
        if n < 2:
            raise ValueError("need >= 2 blocks")
        if _SH + ((_RH + max_payload + 7) & ~3) > bs:
            raise ValueError("max_payload too big for block")
        self._bs = bs
        self._n = n
        self._maxp = max_payload
        self._ack_lag = ack_lag
        self._hb = bytearray(_SH)
        self._rb = bytearray(_RH + max_payload + 8)
        self._rmv = memoryview(self._rb)
        self._rhv = self._rmv[:_RH]
        # per sector: sector seq (0 = free/invalid), base seq, highest reading
        # seq, number of readings, end of valid records, erase count
        self._sseq = [0] * n
        self._base = [0] * n
        self._last = [0] * n
        self._cnt = [0] * n
        self._end = [0] * n
        self._wear = [0] * n
        self._order = []  # valid sectors, oldest first
        self._head = -1
        self._wo = bs
        self._top = 0
        self._next = 1
        self._acked = 0
        self._acked_disk = 0
        self._bad_mark = -1
        self._rs = 0
        self._dmg = -1
        self._dt = 0
        self._ds = 0
        self._dl = 0
        self._cs = -1  # pending() cursor: sector, offset, its sector seq
        self._co = 0
        self._css = 0
        self.appended = 0
        self.dropped = 0
        self.erases = 0
        self.writes = 0
        self.corrupt_skipped = 0
        self.recovered_torn = 0
        self._recover()

    # -- low level -------------------------------------------------------
    def _rec_at(self, i, off, end):
        # Length of the valid record at (i, off) (loaded into _rb), else 0.
        if off + _RH + 4 > end:
            return 0
        rb = self._rb
        self._dev.readblocks(self._first + i, self._rhv, off)
        t = rb[0]
        if (t != _T_READ and t != _T_ACK) or rb[1] != t ^ 0xFF:
            return 0
        ln = rb[2] | (rb[3] << 8)
        rs = (_RH + ln + 7) & ~3
        if ln > self._maxp or off + rs > end:
            return 0
        mv = self._rmv
        self._dev.readblocks(self._first + i, mv[_RH:rs], off + _RH)
        c = crc32(mv[:_RH + ln])
        p = _RH + ln  # compared in 16-bit halves: no big-int allocation
        if (c & 0xFFFF) != rb[p] | (rb[p + 1] << 8) or (c >> 16) != rb[p + 2] | (rb[p + 3] << 8):
            return 0
        return rs

    def _last_prog(self, i, off, end):
        # 1 + offset of the last programmed (non-0xFF) byte in [off, end), or off.
        mv = self._rmv
        while end > off:
            k = min(len(mv), end - off)
            self._dev.readblocks(self._first + i, mv[:k], end - k)
            for j in range(k - 1, -1, -1):
                if mv[j] != 0xFF:
                    return end - k + j + 1
            end -= k
        return off

    def _bad(self, i, off, torn):
        # Count a damaged region once, even when later reads walk over it again.
        key = self._sseq[i] * self._bs + off
        if key > self._bad_mark:
            self._bad_mark = key
            if torn:
                self.recovered_torn += 1
            else:
                self.corrupt_skipped += 1

    def _next_rec(self, i, off, end):
        # Offset of the next valid record at or after off (loaded into _rb,
        # size in _rs); -1 at erased space, -2 at a damaged tail. A damaged
        # region skipped on the way starts at _dmg (else -1); _dt/_ds hold the
        # tag (0 if unreadable) and seq its header claims.
        self._dmg = -1
        rs = self._rec_at(i, off, end)
        if rs:
            self._rs = rs
            return off
        if self._last_prog(i, off, end) == off:
            return -1
        rb = self._rb
        self._dmg = off
        self._dt = 0
        if off + _RH + 4 <= end and rb[1] == rb[0] ^ 0xFF:
            self._dt = rb[0]
            self._ds = self._rec_seq()
            self._dl = rb[2] | (rb[3] << 8)
        c = off + 4
        while c + _RH + 4 <= end:
            rs = self._rec_at(i, c, end)
            if rs:
                self._rs = rs
                return c
            c += 4
        return -2

    def _rec_seq(self):
        rb = self._rb
        return rb[4] | (rb[5] << 8) | (rb[6] << 16) | (rb[7] << 24)

    # -- recovery --------------------------------------------------------
    def _recover(self):
        hb = self._hb
        dev = self._dev
        bs = self._bs
        nxt = 1
        ack = 0
        wmax = 0
        for i in range(self._n):
            dev.readblocks(self._first + i, hb, 0)
            m, ss, base, a, w, c = struct.unpack("<IIIIII", hb)
            if m == _MAGIC and ss and crc32(memoryview(hb)[:20]) == c:
                self._sseq[i] = ss
                self._base[i] = base
                self._wear[i] = w
                self._order.append(i)
                nxt = max(nxt, base)
                ack = max(ack, a)
                wmax = max(wmax, w)
            elif m != 0xFFFFFFFF or ss != 0xFFFFFFFF:
                # Torn header write, cut erase or damage. The sector is free,
                # but its records still prove which seqs were committed.
                self.corrupt_skipped += 1
                off = _SH
                while True:
                    off = self._next_rec(i, off, bs)
                    if off < 0:
                        break
                    if self._rb[0] == _T_READ:
                        nxt = max(nxt, self._rec_seq() + 1)
                    off += self._rs
        for i in range(self._n):
            if not self._sseq[i]:
                self._wear[i] = wmax  # unknown: assume the worst seen
        self._order.sort(key=lambda s: self._sseq[s])
        floor = 0
        for i in self._order:
            off = _SH
            end = _SH
            while True:
                off = self._next_rec(i, off, bs)
                if self._dmg >= 0:
                    # A torn write is the reading that was to be floor + 1
                    # (re-appended after the reboot) or an ack marker.
                    t = self._dt
                    self._bad(i, self._dmg, off == -2 or t == _T_ACK or
                              (t == _T_READ and self._ds == floor + 1))
                if off < 0:
                    break
                seq = self._rec_seq()
                if self._rb[0] == _T_READ:
                    if seq <= floor:
                        self._bad(i, off, False)  # out of order: not ours
                    else:
                        floor = seq
                        self._last[i] = seq
                        self._cnt[i] += 1
                        nxt = max(nxt, seq + 1)
                        ack = max(ack, struct.unpack_from("<I", self._rb, 8)[0])  # boot only
                else:
                    ack = max(ack, seq)
                off += self._rs
                end = off
            self._end[i] = end
            self._top = self._sseq[i]
            self._head = i
            wo = end
            if off == -2:
                # Torn tail: never program over it; resume after the last
                # programmed byte (and after the extent its header claims).
                wo = self._last_prog(i, end, bs)
                if self._dt and self._dl <= self._maxp:
                    wo = max(wo, end + ((_RH + self._dl + 7) & ~3))
                wo = min((wo + 3) & ~3, bs)
            self._wo = wo
        if self._head >= 0:
            self._end[self._head] = self._wo
        self._next = nxt
        self._acked = self._acked_disk = min(ack, nxt - 1)

    # -- writing ---------------------------------------------------------
    def _open(self, for_ack):
        i = (self._head + 1) % self._n
        if self._sseq[i]:
            lost = 0
            if self._last[i] > self._acked:
                lost = self._count_above(i, self._acked)
            if lost and for_ack:
                return False  # an ack marker never costs a reading
            self.dropped += lost
            self._order.remove(i)
            self._sseq[i] = 0
        dev = self._dev
        dev.ioctl(6, self._first + i)
        self.erases += 1
        self._wear[i] += 1
        self._top += 1
        hb = self._hb
        struct.pack_into("<IIIII", hb, 0, _MAGIC, self._top, self._next, self._acked, self._wear[i])
        struct.pack_into("<I", hb, 20, crc32(memoryview(hb)[:20]))
        dev.writeblocks(self._first + i, hb, 0)
        self.writes += 1
        self._sseq[i] = self._top
        self._base[i] = self._next
        self._last[i] = 0
        self._cnt[i] = 0
        self._end[i] = _SH
        self._order.append(i)
        self._head = i
        self._wo = _SH
        self._acked_disk = self._acked
        return True

    def _write(self, tag, seq, payload, n):
        rs = (_RH + n + 7) & ~3
        if self._wo + rs > self._bs:
            if not self._open(tag == _T_ACK):
                return False
        rb = self._rb
        struct.pack_into("<BBHII", rb, 0, tag, tag ^ 0xFF, n, seq, self._acked)
        if n:
            rb[_RH:_RH + n] = payload
        mv = self._rmv
        struct.pack_into("<I", rb, _RH + n, crc32(mv[:_RH + n]))
        for j in range(_RH + n + 4, rs):
            rb[j] = 0
        self._dev.writeblocks(self._first + self._head, mv[:rs], self._wo)
        self.writes += 1
        self._wo += rs
        self._end[self._head] = self._wo
        self._acked_disk = self._acked
        return True

    @property
    def next_seq(self):
        return self._next

    @property
    def acked_seq(self):
        return self._acked

    def append(self, seq, payload):
        """Commit one reading; returns once it is on flash (publish after)."""
        if seq != self._next:
            raise ValueError("seq must be next_seq")
        n = len(payload)
        if n > self._maxp:
            raise ValueError("payload too long")
        self._write(_T_READ, seq, payload, n)
        h = self._head
        self._last[h] = seq
        self._cnt[h] += 1
        self._next = seq + 1
        self.appended += 1

    def ack(self, seq):
        """The gateway stored everything <= seq. Persisted lazily (see docs)."""
        if seq <= self._acked:
            return
        if seq >= self._next:
            raise ValueError("ack beyond last committed seq")
        self._acked = seq
        if seq - self._acked_disk >= self._ack_lag:
            self._write(_T_ACK, seq, None, 0)

    def flush(self):
        """Persist the ack now (e.g. before deep sleep)."""
        if self._acked > self._acked_disk:
            self._write(_T_ACK, self._acked, None, 0)

    # -- reading ---------------------------------------------------------
    def _count_above(self, i, floor):
        k = 0
        off = _SH
        end = self._end[i]
        while True:
            off = self._next_rec(i, off, end)
            if self._dmg >= 0:
                self._bad(i, self._dmg, False)
            if off < 0:
                return k
            if self._rb[0] == _T_READ and self._rec_seq() > floor:
                k += 1
            off += self._rs

    def pending(self, max_count=16, max_bytes=4096):
        """Oldest-first [(seq, payload bytes)] not yet acked, within both limits.

        Payloads are fresh bytes objects the caller owns. A record longer than
        max_bytes is never returned, so max_bytes must be >= the largest payload.
        """
        out: list = []
        acked = floor = self._acked
        room = min(max_bytes, 0x3FFFFFFF)  # a small int: no allocation per subtraction
        order = self._order
        k0 = 0
        off0 = _SH
        if self._cs >= 0 and self._sseq[self._cs] == self._css:
            k0 = order.index(self._cs)  # resume where acked records end
            off0 = self._co
        for k in range(k0, len(order)):
            i = order[k]
            if self._last[i] <= floor:
                continue
            off = off0 if k == k0 else _SH
            end = self._end[i]
            while len(out) < max_count:
                off = self._next_rec(i, off, end)
                if self._dmg >= 0:
                    self._bad(i, self._dmg, False)
                if off < 0:
                    break
                rs = self._rs
                seq = self._rec_seq()
                if self._rb[0] == _T_READ and seq > floor:
                    n = self._rb[2] | (self._rb[3] << 8)
                    if n > room:
                        return out
                    out.append((seq, bytes(self._rmv[_RH:_RH + n])))
                    room -= n
                    floor = seq
                elif not out and seq <= acked:
                    self._cs = i
                    self._co = off + rs
                    self._css = self._sseq[i]
                off += rs
            if len(out) >= max_count:
                break
        return out

    def stats(self):
        p = 0
        a = self._acked
        for i in self._order:
            if self._base[i] > a:
                p += self._cnt[i]
            elif self._last[i] > a:
                p += self._count_above(i, a)
        return {
            "appended": self.appended,
            "acked_seq": a,
            "next_seq": self._next,
            "pending": p,
            "dropped": self.dropped,
            "erases": self.erases,
            "wear_max": max(self._wear),
            "writes": self.writes,
            "corrupt_skipped": self.corrupt_skipped,
            "recovered_torn": self.recovered_torn,
        }
