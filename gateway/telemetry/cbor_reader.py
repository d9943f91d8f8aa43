"""A small strict CBOR reader: the authority on what is well-formed (RFC 8949).

``Reader(data).item()`` reads one data item into the value tree cbor2 gives
(tuples, dicts, ``CBORTag``, ``CBORSimpleValue``) and raises ``CborError``
for anything not well-formed (section 3 and appendix F: truncation, reserved
additional information, misplaced breaks, bad indefinite-length chunks,
two-byte simple values below 32, invalid UTF-8), for nesting deeper than
``MAX_DEPTH``, and for maps with duplicate or container/tag keys. It accepts
every encoding choice (wider heads, indefinite lengths, any key order): the
telemetry decoder uses it for messages that are not canonical.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

MAX_DEPTH = 16
# Map keys we can compare exactly; containers and tags are never a label we use.
KEY_TYPES = (int, bytes, str, bool, float, type(None), cbor2.CBORSimpleValue, type(cbor2.undefined))


class CborError(Exception):
    """Raised by Reader; ``kind`` is "malformed" (not well-formed CBOR) or "keys" (unusable map keys)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Reader:
    """Reads one CBOR item into the value tree cbor2 would give (tuples, dicts,
    CBORTag, CBORSimpleValue), rejecting what is not well-formed (RFC 8949
    section 3 and appendix F) and maps with duplicate or container/tag keys."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def head(self) -> tuple[int, int, int | None]:
        """(major type, additional info, argument or None for indefinite length)."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise CborError("malformed", "truncated: expected a data item")
        ib = data[pos]
        major, ai = ib >> 5, ib & 0x1F
        pos += 1
        arg: int | None
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > len(data):
                raise CborError("malformed", "truncated: head argument cut short")
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif ai == 31:
            if major in (0, 1, 6):
                raise CborError("malformed", f"indefinite length on major type {major}")
            if major == 7:
                raise CborError("malformed", "break code outside an indefinite-length item")
            arg = None
        else:
            raise CborError("malformed", f"reserved additional information {ai}")
        self.pos = pos
        return major, ai, arg

    def item(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise CborError("malformed", f"nested deeper than {MAX_DEPTH}")
        major, ai, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            assert arg is not None
            return -1 - arg
        if major in (2, 3):
            raw = self._string(major, arg)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CborError("malformed", "text string is not valid UTF-8") from None
        if major == 4:
            return tuple(self._items(arg, depth))
        if major == 5:
            return self._map(arg, depth)
        if major == 6:
            assert arg is not None
            return cbor2.CBORTag(arg, self.item(depth + 1))
        return self._simple(ai, arg)

    def at_break(self) -> bool:
        """In an indefinite-length container: consume a break code if it is next."""
        if self.pos >= len(self.data):
            raise CborError("malformed", "truncated: container cut short")
        if self.data[self.pos] == 0xFF:
            self.pos += 1
            return True
        return False

    def _items(self, arg: int | None, depth: int) -> list[Any]:
        out: list[Any] = []
        if arg is None:
            while not self.at_break():
                out.append(self.item(depth + 1))
            return out
        if arg > len(self.data) - self.pos:
            raise CborError("malformed", f"truncated: array of {arg} items")
        for _ in range(arg):
            out.append(self.item(depth + 1))
        return out

    def _map(self, arg: int | None, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        if arg is not None and 2 * arg > len(self.data) - self.pos:
            raise CborError("malformed", f"truncated: map of {arg} pairs")
        while (len(out) < arg) if arg is not None else not self.at_break():
            key = self.item(depth + 1)
            value = self.item(depth + 1)
            if type(key) not in KEY_TYPES:  # containers and tags: never a label we use
                raise CborError("keys", f"unusable map key of type {type(key).__name__}")
            if key in out:
                raise CborError("keys", f"duplicate map key {key!r}")
            out[key] = value
        return out

    def _string(self, major: int, arg: int | None) -> bytes:
        data = self.data
        if arg is not None:
            end = self.pos + arg
            if end > len(data):
                raise CborError("malformed", "truncated: string cut short")
            raw = data[self.pos:end]
            self.pos = end
            return raw
        chunks = []
        while not self.at_break():
            cmajor, _ai, carg = self.head()
            if cmajor != major or carg is None:
                raise CborError("malformed", "indefinite-length string with a bad chunk")
            chunks.append(self._string(major, carg))
        return b"".join(chunks)

    @staticmethod
    def _simple(ai: int, arg: int | None) -> Any:
        assert arg is not None
        if ai < 24:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            if ai == 23:
                return cbor2.undefined
            return cbor2.CBORSimpleValue(ai)
        if ai == 24:
            if arg < 32:
                raise CborError("malformed", f"two-byte simple value {arg} < 32")
            return cbor2.CBORSimpleValue(arg)
        fmt, size = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}[ai]
        return struct.unpack(fmt, arg.to_bytes(size, "big"))[0]
