"""Calls encoded and results decoded from a contract's ABI (eth-abi), so no Solidity signature is restated."""

from __future__ import annotations

from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import (function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_names,
                           get_abi_output_types)


class AbiFunction:
    """One function of an ABI: its selector, input and output types."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.name = str(entry["name"])
        self.selector = bytes(function_abi_to_4byte_selector(entry))  # type: ignore[arg-type]
        self.inputs = list(get_abi_input_types(entry))  # type: ignore[arg-type]
        self.outputs = list(get_abi_output_types(entry))  # type: ignore[arg-type]
        self.output_names = list(get_abi_output_names(entry))  # type: ignore[arg-type]

    def call_data(self, *args: Any) -> bytes:
        return self.selector + abi_encode(self.inputs, list(args))

    def decode_result(self, data: bytes) -> tuple[Any, ...]:
        """Strict: raises on data that is not exactly the outputs' canonical encoding (eth-abi alone
        accepts trailing bytes)."""
        out = tuple(abi_decode(self.outputs, data, strict=True))
        if abi_encode(self.outputs, list(out)) != data:
            raise ValueError(f"{self.name}: not the canonical encoding of its outputs")
        return out


def functions(abi: list[dict[str, Any]]) -> dict[str, AbiFunction]:
    return {e["name"]: AbiFunction(e) for e in abi if e.get("type") == "function"}


def constructor_types(abi: list[dict[str, Any]]) -> list[str]:
    ctor: dict[str, Any] = next((e for e in abi if e.get("type") == "constructor"), {"inputs": []})
    return [str(i["type"]) for i in ctor["inputs"]]
