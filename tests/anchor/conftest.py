"""One anchoring rig for the package: starting 4 validators, anvil and a deployed registry costs seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .rig import AnchorRig


@pytest.fixture(scope="package")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnchorRig]:
    r = AnchorRig(tmp_path_factory.mktemp("anchor")).start()
    try:
        yield r
    finally:
        r.close()
