"""The installer's tools: build a firmware bundle, flash it, provision the
secure element, print QR labels (``metanoia device build|flash|provision|label``).

Every failure is an ``InstallerError`` with a ``reason`` (a stable code that
docs/installer.md explains) and a message that says what to do about it.
"""

from __future__ import annotations


class InstallerError(Exception):
    """A refusal the installer can act on; ``reason`` is a stable code."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
