"""`metanoia telemetry` (placeholder until its module lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("telemetry", help="(not built yet)")
