"""Packaging hook: the wheel carries the MicroPython firmware as ``hil/firmware/``.

``firmware/`` is not a Python package of the gateway (its modules are
``device``, ``telemetry``, ... on the device's path), yet ``metanoia device
build`` compiles it and ``device sim`` runs it. So ``build_py`` copies the
tree into the built ``hil`` package, where ``hil.firmware_host.locate_firmware``
looks first. An editable install (``./dev``) skips the copy: there the
locator finds ``firmware/`` beside ``hil/`` in the repository. Everything
else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FIRMWARE = HERE / "firmware"
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy")


class build_py_with_firmware(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "hil" / "firmware"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(FIRMWARE, target, ignore=SKIP)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "hil" / "firmware"
            outputs += [str(target / p.relative_to(FIRMWARE)) for p in FIRMWARE.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".mpy")]
        return outputs


setup(cmdclass={"build_py": build_py_with_firmware})
