"""Atomic file writes with the right permissions from the first byte.

A secret is never readable by others, not even for an instant: the temporary
file is created with mode 0600 (``os.open``), written, fsynced and renamed
over the target. ``owner`` (user[:group]) hands a file to the broker's user
when the generator runs as root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PRIVATE, PUBLIC = 0o600, 0o644


def chown(path: Path, owner: str) -> None:
    """``owner`` is ``user``, ``user:group`` or ``:group``."""
    user, _, group = owner.partition(":")
    if user and group:
        shutil.chown(path, user, group)
    elif user:
        shutil.chown(path, user=user)
    elif group:
        shutil.chown(path, group=group)


def _write(path: Path, data: bytes, mode: int, owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner:
            chown(tmp, owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def write_private(path: Path, data: bytes, owner: str | None = None) -> None:
    """A secret: mode 0600."""
    _write(path, data, PRIVATE, owner)


def write_public(path: Path, data: bytes, owner: str | None = None) -> None:
    """Nothing secret: mode 0644."""
    _write(path, data, PUBLIC, owner)


def write_if_changed(path: Path, data: bytes, mode: int, owner: str | None = None) -> bool:
    """Rewrite only when the content differs (or the mode drifted); True when written."""
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            if owner:
                chown(path, owner)
            return False
    except FileNotFoundError:
        pass
    _write(path, data, mode, owner)
    return True


def private_dir(path: Path) -> Path:
    """A directory only its owner can enter (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
