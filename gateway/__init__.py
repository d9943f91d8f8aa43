"""Metanoia gateway: verifies and stores telemetry, trades and settles (CPython)."""
