"""Aggregator: verifies telemetry, acknowledges it, turns it into interval energy."""
