"""``metanoia device build``: every module compiled by mpy-cross, deterministic,
the version stamped, the manifest true to the files; the bundle runs on MicroPython."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from gateway.installer import build, site
from hil.firmware_host import FIRMWARE
from hil.mp_session import NodeSession


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_module_is_compiled_and_main_stays_source(bundle: build.Bundle):
    paths = {f.path for f in bundle.files}
    want = set()
    for src in build.source_files():
        rel = src.relative_to(FIRMWARE).as_posix()
        want.add(rel if rel == "main.py" or src.suffix == ".json" else rel[:-3] + ".mpy")
    assert paths == want | {"config.json"}
    assert not any(p.startswith(("host/", "board/")) for p in paths)
    assert all((bundle.fs / p).read_bytes()[:1] == b"M" for p in paths if p.endswith(".mpy"))  # mpy header


def test_the_manifest_lists_every_file_with_its_hash(bundle: build.Bundle):
    m = json.loads((bundle.root / build.MANIFEST).read_text())
    assert m["firmware_version"] == bundle.version and m["grid"] == "oak-court"
    assert m["gateway_url"] == "https://gw.oak-court.example"
    on_disk = tree(bundle.fs)
    assert {f["path"]: f["sha256"] for f in m["files"]} == {p: hashlib.sha256(d).hexdigest() for p, d in on_disk.items()}
    assert build.load(bundle.root).files == bundle.files


def test_same_inputs_give_the_same_bytes(bundle: build.Bundle, tmp_path: Path):
    again = build.build(site.from_dict({"grid": "oak-court", "gateway_url": "https://gw.oak-court.example"}),
                        tmp_path / "again")
    assert tree(again.root) == tree(bundle.root)


def test_the_version_follows_the_sources(tmp_path: Path):
    fw = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    before = build.firmware_version(fw)
    assert before == build.firmware_version(FIRMWARE)
    assert before.startswith("0.1.0+") and len(before.split("+")[1]) == 8
    loop = fw / "device" / "loop.py"
    loop.write_text(loop.read_text() + "\n# a change\n")
    assert build.firmware_version(fw) != before


def test_the_bundle_runs_on_micropython_and_reports_its_version(bundle: build.Bundle):
    with NodeSession(bundle.fs) as dev:
        out = dev.exec("from device import version, config, loop\nimport device.provision\n"
                       "print(version.VERSION)\nprint(config.load('/config.json')['grid'])\n"
                       "print(loop.state_payloads(version.VERSION)[0].decode())\n"
                       "from meter_driver.profile import load_profile\nprint(load_profile('sdm630')['name'])")
    ver, grid, online, profile = out.split("\n")
    assert ver == bundle.version and grid == "oak-court" and profile
    assert json.loads(online) == {"state": "online", "fw": bundle.version}


def test_a_broken_module_stops_the_build_naming_it(tmp_path: Path):
    fw = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "device" / "extra.py").write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    with pytest.raises(build.BuildError) as e:
        build.build(site.from_dict({}), tmp_path / "b", firmware=fw)
    assert e.value.reason == "mpy_cross" and "device/extra.py" in str(e.value)
    assert not (tmp_path / "b").exists()


def test_an_existing_folder_that_is_not_a_bundle_is_never_overwritten(tmp_path: Path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.txt").write_text("precious")
    with pytest.raises(build.BuildError) as e:
        build.build(site.from_dict({}), tmp_path / "home")
    assert e.value.reason == "out_exists" and (tmp_path / "home" / "thesis.txt").read_text() == "precious"


def test_a_tampered_bundle_is_refused(bundle: build.Bundle, tmp_path: Path):
    copy = tmp_path / "b"
    shutil.copytree(bundle.root, copy)
    (copy / "fs" / "device" / "loop.mpy").write_bytes(b"M\x06tampered")
    with pytest.raises(build.BuildError) as e:
        build.load(copy)
    assert e.value.reason == "bad_bundle" and "loop.mpy" in str(e.value)
    with pytest.raises(build.BuildError) as e:
        build.load(tmp_path)
    assert e.value.reason == "no_bundle"


def test_broker_tls_puts_the_ca_in_the_bundle(tmp_path: Path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    b = build.build(site.from_dict({"broker": {"tls": True, "ca_file": str(ca)}}), tmp_path / "b")
    assert (b.fs / "ca.crt").read_bytes() == ca.read_bytes()
    assert json.loads((b.fs / "config.json").read_text())["mqtt"]["ca_file"] == "/ca.crt"
