"""The firmware version the device reports in its retained ``state`` message.

``metanoia device build`` replaces this module in the bundle with the release
stamped with the SHA-256 of the firmware sources (e.g. ``0.1.0+3a9c12de``), so
two bundles report the same version only if they run the same code. Run from
the source tree (simulation, tests) the device reports ``RELEASE + "+src"``.
Versions are made of ``0-9 A-Z a-z . + -`` only: they go into JSON unescaped.
"""

RELEASE = "0.1.0"
VERSION = RELEASE + "+src"
