"""Telemetry: signed readings as COSE_Sign1 (``cose``) over a minimal CBOR encoder (``cbor``)."""
