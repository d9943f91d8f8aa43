"""The ingest's checks after the signature: reasons, clock sanity, counters (pure functions).

A reading reaches these checks only once its signature verified under the
device's pinned key, so whatever they decide is about a reading the device
really signed. Outcomes (docs/gateway.md, "What is stored, flagged, rejected"):

- **stored**: the normal case. A reading with ``FLAG_CLOCK_UNSYNCED`` is stored
  (its counters are good energy; the signed flag is its mark, and
  ``stored_clock_unsynced`` counts it); so is a reading whose counter went
  backwards *with* ``FLAG_COUNTER_BACKWARDS`` (``stored_counter_backwards``).
- **quarantined** (rejected, counted, kept apart as evidence, acknowledged so
  the device is not stuck resending it forever): seq 0, a clock in the future
  beyond the tolerance, a clock far in the past, time 0 without the unsynced
  flag, a counter going backwards without the flag.
- **rejected** before or at the signature (counted, never acknowledged): every
  decoder reason, a bad topic, unknown or revoked device, kid != topic id,
  bad signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.aggregator.device_state import STATE_REASONS
from gateway.telemetry import REASONS as DECODER_REASONS
from gateway.telemetry.format import FLAG_CLOCK_UNSYNCED, FLAG_COUNTER_BACKWARDS

# Rejections before storage, besides the decoder's own reasons (never acknowledged).
INGEST_REASONS: dict[str, str] = {
    "bad_topic": "topic is not metanoia/GRID/DEVICE/tele with DEVICE an 18-digit hex device id",
    "unknown_device": "no device with this id is provisioned for this grid",
    "revoked_device": "the device was revoked",
    "topic_mismatch": "the reading's kid is not the device id in the topic",
    "internal_error": "the gateway failed on this message (a bug: logged with its traceback)",
}
# Signed by the device but not fit to store as energy: quarantined and acknowledged.
QUARANTINE_REASONS: dict[str, str] = {
    "bad_seq": "seq 0 (seqs start at 1)",
    "clock_future": "time further in the future than the tolerance",
    "clock_past": "time before the earliest plausible date or older than the maximum age",
    "clock_unflagged": "time 0 without the clock-unsynced flag",
    "counter_backwards": "a cumulative counter went backwards without the counter-backwards flag",
}
# Not rejections: counted so an operator sees them.
NOTES: dict[str, str] = {
    "duplicate": "a reading already stored arrived again (acknowledged, not stored twice)",
    "seq_conflict": "a different validly signed reading for a seq already stored (device flash erased?)",
    "stored_clock_unsynced": "stored; the device's clock was not synced (flagged)",
    "stored_counter_backwards": "stored; a counter went backwards and the device flagged it",
}
REJECTION_REASONS: dict[str, str] = {**DECODER_REASONS, **INGEST_REASONS, **QUARANTINE_REASONS, **STATE_REASONS}
COUNTER_NAMES: dict[str, str] = {**REJECTION_REASONS, **NOTES}

EARLIEST_TIME = 1_577_836_800  # 2020-01-01T00:00:00Z: no synced meter clock reads earlier


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """Clock sanity limits, relative to the gateway's clock at receipt."""

    max_future_s: int = 300            # device clock ahead of the gateway by more: rejected
    max_age_s: int = 400 * 86400       # a backlog older than this: rejected
    earliest: int = EARLIEST_TIME


def check_clock(time: int, flags: int, now: float, policy: ClockPolicy) -> str | None:
    """None when the reading's time is acceptable, else the quarantine reason."""
    if flags & FLAG_CLOCK_UNSYNCED:
        return None  # the device says its clock is not trustworthy: stored, flagged
    if time == 0:
        return "clock_unflagged"
    if time > now + policy.max_future_s:
        return "clock_future"
    if time < policy.earliest or time < now - policy.max_age_s:
        return "clock_past"
    return None


Counters = tuple[int, int, int]  # (import_wh, export_wh, pv_wh)


def went_backwards(before: Counters | None, after: Counters) -> bool:
    """True when any cumulative counter of ``after`` is below ``before``."""
    return before is not None and (after[0] < before[0] or after[1] < before[1] or after[2] < before[2])


def check_counters(prev: Counters | None, counters: Counters, flags: int,
                   nxt: Counters | None = None, next_flags: int = 0) -> tuple[str | None, str | None]:
    """(quarantine reason, note) for a reading between its stored neighbours by seq.

    ``prev``/``nxt``: the counters of the stored readings just below / above
    this seq (None when there is none). Going backwards from ``prev`` (or
    ``nxt`` going backwards from this one, unless ``nxt`` itself is flagged) is
    accepted only with ``FLAG_COUNTER_BACKWARDS``.
    """
    backwards = went_backwards(prev, counters) or (
        nxt is not None and not next_flags & FLAG_COUNTER_BACKWARDS and went_backwards(counters, nxt))
    if not backwards:
        return None, None
    if flags & FLAG_COUNTER_BACKWARDS:
        return None, "stored_counter_backwards"
    return "counter_backwards", None
