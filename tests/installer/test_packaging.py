"""A built wheel carries the firmware: `device build` and `device sim` work from an installed
location, with no source checkout in sight (setup.py copies firmware/ into hil/firmware/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "gateway", "hil", "bench", "firmware")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_the_wheel_carries_the_firmware_and_device_build_finds_it_installed(tmp_path) -> None:
    # build from a copy of the sources: the test cannot lean on the checkout, nor litter it with build/
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METANOIA_FIRMWARE")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), "-q"], tmp_path, env)
    (wheel,) = wheels.glob("metanoia_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    firmware = {p.relative_to(ROOT / "firmware").as_posix() for p in (ROOT / "firmware").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert firmware and {f"hil/firmware/{f}" for f in firmware} <= names
    assert not any("__pycache__" in n for n in names)

    # "installed": the wheel unpacked as site-packages would hold it, first on the path, run from elsewhere
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env["PYTHONPATH"] = str(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    where = _run([sys.executable, "-c", "import gateway, hil.firmware_host as f; print(gateway.__file__); "
                  "print(f.FIRMWARE)"], run_dir, env).stdout.split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == site / "hil" / "firmware"

    out = tmp_path / "bundle"
    built = _run([sys.executable, "-m", "gateway.cli", "device", "build", "--out", str(out), "--json"], run_dir, env)
    summary = json.loads(built.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    # the same sources as the checkout: the same firmware version (it hashes every source file)
    from gateway.installer.build import firmware_version
    assert manifest["firmware_version"] == firmware_version() == summary.get("firmware_version",
                                                                             manifest["firmware_version"])
    assert any(f["path"] == "device/app.mpy" for f in manifest["files"])

    sim = _run([sys.executable, "-m", "gateway.cli", "device", "sim", "--readings", "2", "--out",
                str(tmp_path / "sim")], run_dir, env)
    assert json.loads(sim.stdout.strip().splitlines()[-1])["files"] == ["1.cose", "2.cose"]

    # a wrong METANOIA_FIRMWARE is a clear refusal, not a build of nothing
    env["METANOIA_FIRMWARE"] = str(tmp_path / "nowhere")
    bad = subprocess.run([sys.executable, "-c", "import hil.firmware_host"], cwd=run_dir, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "is not a firmware tree" in bad.stderr
