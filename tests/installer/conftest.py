"""Fixtures of the installer's tools: a bundle built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.installer import build, site


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> build.Bundle:
    """The firmware of this tree, built for a site (grid oak-court)."""
    out = tmp_path_factory.mktemp("bundle") / "b"
    return build.build(site.from_dict({"grid": "oak-court", "gateway_url": "https://gw.oak-court.example/"}), out)


@pytest.fixture()
def fs_copy(bundle: build.Bundle, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "fs"
    shutil.copytree(bundle.fs, dst)
    return dst
