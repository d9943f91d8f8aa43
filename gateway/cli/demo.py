"""`metanoia demo` (placeholder until its module lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("demo", help="(not built yet)")
