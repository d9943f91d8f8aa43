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


# ``./dev test -n 2 --dist loadfile``: two pytest-xdist workers. Each test file goes
# whole to one worker, so a module-scoped fixture is built once; a package whose conftest holds a
# package-scoped fixture (the anchoring rig, the read-model's shared market day) goes whole to one
# worker too.
WHOLE_PACKAGES = ("tests/anchor/", "tests/web/readmodel/")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):  # type: ignore[no-untyped-def]
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrPackage(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((p for p in WHOLE_PACKAGES if path.startswith(p)), path)

    return FileOrPackage(config, log)
