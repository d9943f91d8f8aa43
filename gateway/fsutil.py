"""Durable file replacement, written once.

Temp file in the same folder, fsync, rename over the target, fsync of the
folder: after it returns, a power cut leaves either the old or the new
contents, never a mix and never neither. Used by the validator's vote and
intake logs when they compact, and by the wallet for key material.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def replace_durably(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
