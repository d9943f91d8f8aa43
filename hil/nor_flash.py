"""NOR flash model with the esp32.Partition extended block-device interface.

MicroPython-clean (runs beside the firmware on MicroPython under Node) and
CPython. What it models:

- ``ioctl(6, block)`` erases a block to 0xFF; ``writeblocks(block, buf, offset)``
  only clears bits (new = old AND data), like NOR page programming, so a write
  over programmed bytes shows up as corruption instead of silently working.
  ``writeblocks(block, buf)`` without offset is the basic interface (erase the
  blocks, then write), as on esp32.Partition.
- wear: ``erases[block]`` counts erases per block; ``writes`` and
  ``bytes_programmed`` count program operations and bytes.
- power cuts: ``cut_after(n, scribble=False)`` lets exactly ``n`` more bytes be
  programmed (across any number of writes), then the power fails inside the
  write that would program byte ``n + 1`` (or right after the write that
  programmed byte ``n``). With ``scribble`` the unprogrammed rest of the torn
  write gets random bits cleared (an interrupted program leaves cells in any
  state). ``cut_erase(keep, scribble=False)``: the next erase stops after
  erasing the first ``keep`` bytes of the block (optionally the rest gets random
  bits set). After a cut every operation raises ``PowerCut`` until
  ``power_on()``: the code under test must not carry on. A "reboot" is:
  ``flash.power_on()`` and a new RingBuffer on the same flash object.
- ``path``: the image is also kept in a file (written through), so a
  simulated device keeps its flash across process restarts.
"""

BLOCK_SIZE = 4096


class PowerCut(Exception):
    """The simulated supply failed during a flash operation."""


class NorFlash:
    def __init__(self, block_count=16, block_size=BLOCK_SIZE, path=None, seed=1):
        self.block_size = block_size
        self.block_count = block_count
        size = block_size * block_count
        self.mem = bytearray(b"\xff" * size)
        self.erases = [0] * block_count
        self.writes = 0
        self.bytes_programmed = 0
        self._rnd = seed or 1
        self._budget = -1       # bytes that may still be programmed; -1 = no cut armed
        self._scribble = False
        self._erase_keep = -1   # bytes a cut erase gets done; -1 = no cut armed
        self._erase_scribble = False
        self.dead = False
        self._f = None
        loaded = False
        if path is not None:
            try:
                f = open(path, "r+b")
                n = f.readinto(self.mem)
                if n != size:
                    raise ValueError("flash image size mismatch")
                loaded = True
            except OSError:
                f = open(path, "w+b")
            self._f = f
        if not loaded:
            if self._f is not None:
                self._f.write(self.mem)
                self._f.flush()

    # -- fault injection -------------------------------------------------
    def cut_after(self, nbytes, scribble=False):
        self._budget = nbytes
        self._scribble = scribble

    def cut_erase(self, keep, scribble=False):
        self._erase_keep = keep
        self._erase_scribble = scribble

    def disarm(self):
        self._budget = -1
        self._erase_keep = -1

    def power_on(self):
        self.disarm()
        self.dead = False

    def copy(self):
        """An independent flash with the same contents (no file, counters kept)."""
        f = NorFlash(self.block_count, self.block_size, seed=self._rnd)
        f.mem[:] = self.mem
        f.erases = list(self.erases)
        f.writes = self.writes
        f.bytes_programmed = self.bytes_programmed
        return f

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _rand8(self):
        x = self._rnd  # xorshift32: the same sequence on CPython and MicroPython
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rnd = x
        return x & 0xFF

    def _die(self):
        self.dead = True
        self._budget = -1
        self._erase_keep = -1
        raise PowerCut()

    def _persist(self, start, end):
        if self._f is not None:
            self._f.seek(start)
            self._f.write(memoryview(self.mem)[start:end])
            self._f.flush()

    def _check(self, block, offset, n):
        if self.dead:
            raise PowerCut()
        if block < 0 or offset < 0 or block * self.block_size + offset + n > len(self.mem):
            raise OSError(22)  # EINVAL: outside the partition

    # -- block device protocol -------------------------------------------
    def readblocks(self, block, buf, offset=0):
        n = len(buf)
        self._check(block, offset, n)
        a = block * self.block_size + offset
        buf[:] = memoryview(self.mem)[a:a + n]

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # basic interface: erase whole blocks, then program
            nb = (len(buf) + self.block_size - 1) // self.block_size
            for b in range(block, block + nb):
                self.ioctl(6, b)
            offset = 0
        n = len(buf)
        self._check(block, offset, n)
        a = block * self.block_size + offset
        mem = self.mem
        self.writes += 1
        done = n
        if self._budget >= 0 and self._budget < n:
            done = self._budget
        for i in range(done):
            mem[a + i] &= buf[i]
        self.bytes_programmed += done
        if self._budget >= 0:
            self._budget -= done
            if done < n:
                if self._scribble:
                    for i in range(done, n):
                        mem[a + i] &= self._rand8() | self._rand8()
                self._persist(a, a + n)
                self._die()
        self._persist(a, a + n)
        if self._budget == 0:
            self._die()

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            self._check(arg, 0, self.block_size)
            a = arg * self.block_size
            mem = self.mem
            keep = self.block_size
            if self._erase_keep >= 0:
                keep = min(self._erase_keep, self.block_size)
            for i in range(a, a + keep):
                mem[i] = 0xFF
            self.erases[arg] += 1
            if keep < self.block_size:
                if self._erase_scribble:
                    for i in range(a + keep, a + self.block_size):
                        mem[i] |= self._rand8() & self._rand8()
                self._persist(a, a + self.block_size)
                self._die()
            self._persist(a, a + self.block_size)
            return 0
        if op in (1, 2, 3):  # init, deinit, sync
            return 0
        return None
