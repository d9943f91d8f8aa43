"""Views as JSON-able data (dataclasses, Decimals, dates, tuples): for ``--json`` output, APIs and tests."""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal
from typing import Any


def to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return "0x" + obj.hex()
    return obj
