"""bench/chain.py's CPU accounting: what a process tree used (children included) and how busy the
machine was, read from /proc at both ends of the measured window."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.chain import cpu_sample


def test_cpu_sample_counts_a_busy_child_and_the_whole_machine():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])
    try:
        a = cpu_sample([os.getpid()])
        t0 = time.monotonic()
        assert a is not None
        time.sleep(1.2)                       # the child burns 0.6 s of CPU, then sleeps
        b = cpu_sample([os.getpid()])
        assert b is not None
        used, busy = b[0] - a[0], b[1] - a[1]
        assert 0.3 <= used <= 1.2, used      # the child's burn (minus what it did before a), not the sleeps
        assert busy >= used - 0.05
        assert busy <= 2 * (os.cpu_count() or 1) * (time.monotonic() - t0)
    finally:
        child.kill()
        child.wait()
