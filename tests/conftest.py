"""Suite-wide fixtures: firmware importable on CPython, MicroPython under Node."""

from __future__ import annotations

import pytest

from hil import firmware_host, micropython_node

firmware_host.install()


@pytest.fixture(scope="session")
def mp():
    """Runs code on real MicroPython (WebAssembly under Node) with the firmware at /fw.

    Fails (does not skip) when Node or the npm package is missing: the suite's
    claim is that the firmware runs on MicroPython, so a missing runtime is an
    error of the set-up, not a reason to pass.
    """
    if not micropython_node.available():
        pytest.fail("MicroPython runtime missing: run ./dev test (it installs node deps)")
    return micropython_node.run
