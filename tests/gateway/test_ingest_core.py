"""The ingest's decisions without a broker: what is stored, quarantined, rejected, counted,
and which ack follows; gaps and their closing; hostile input (hypothesis)."""

from __future__ import annotations

import functools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.signed_readings import SigningDevice, wrap
from gateway.aggregator.checks import ClockPolicy, check_clock, check_counters
from gateway.aggregator.ingest import Ingestor, parse_topic
from gateway.aggregator.keys import REVOKED, DictKeySource
from gateway.aggregator.store import ReadingStore, StoreError
from gateway.aggregator.verify_pool import Verifier
from gateway.cli import main as cli_main
from gateway.telemetry import decode_message
from gateway.telemetry.format import FLAG_CLOCK_UNSYNCED, FLAG_COUNTER_BACKWARDS

GRID = "g1"
NOW = 1_767_225_600.0  # the gateway's clock in these tests
A = SigningDevice.generate(bytes.fromhex("a1a1a1a1a1a1a1a1a1"))
B = SigningDevice.generate(bytes.fromhex("b2b2b2b2b2b2b2b2b2"))
R = SigningDevice.generate(bytes.fromhex("c3c3c3c3c3c3c3c3c3"))   # revoked
U = SigningDevice.generate(bytes.fromhex("d4d4d4d4d4d4d4d4d4"))   # unknown to the gateway


@functools.lru_cache(maxsize=None)  # ECDSA signatures are randomized: the same reading = the same bytes
def good(dev: SigningDevice, seq: int, *, t: int | None = None, imp: int | None = None, flags: int = 0) -> bytes:
    return dev.reading(seq, int(NOW) - 1000 + seq if t is None else t, 10_000 + 5 * seq if imp is None else imp,
                       200, 300, 42, flags)


def topic(dev: SigningDevice | bytes, kind: str = "tele") -> str:
    did = dev if isinstance(dev, bytes) else dev.device_id
    return f"metanoia/{GRID}/{did.hex()}/{kind}"


class Harness:
    def __init__(self, path: str) -> None:
        self.path = path
        self.store = ReadingStore.open(path)
        self.keys = DictKeySource({A.device_id: A.public_key, B.device_id: B.public_key, R.device_id: REVOKED})
        self.ing = Ingestor(self.store, self.keys, Verifier(0), GRID, ClockPolicy(), clock=lambda: NOW)

    def send(self, *msgs: tuple[str, bytes]) -> dict[bytes, int]:
        return self.ing.complete(self.ing.submit([(t, p, int(NOW * 1000)) for t, p in msgs]))

    def seqs(self, dev: SigningDevice) -> list[int]:
        return [s for (s,) in self.store.conn.execute(
            "SELECT seq FROM readings WHERE device_id = ? ORDER BY seq", (dev.device_id,))]

    def quarantined(self, dev: SigningDevice) -> dict[int, str]:
        return dict(self.store.conn.execute("SELECT seq, reason FROM ingest_quarantine WHERE device_id = ?",
                                            (dev.device_id,)))

    def count(self, name: str, dev: SigningDevice | None = None) -> int:
        return self.store.counters(None if dev is None else dev.device_id).get(name, 0)


@pytest.fixture
def h(tmp_path):
    hh = Harness(str(tmp_path / "gw.db"))
    yield hh
    hh.store.close()


def test_readings_are_stored_once_with_raw_bytes_and_acked_contiguously(h):
    msgs = [good(A, s) for s in range(1, 9)]
    assert h.send((topic(A), wrap(msgs[:4])), (topic(A), msgs[4])) == {A.device_id: 5}
    assert h.send((topic(A), wrap(msgs[2:8]))) == {A.device_id: 8}   # 3..5 again: duplicates, acked
    assert h.seqs(A) == list(range(1, 9))
    raws = [bytes(r) for (r,) in h.store.conn.execute("SELECT raw FROM readings ORDER BY seq")]
    assert raws == msgs
    assert h.count("duplicate", A) == 3
    row = h.store.conn.execute("SELECT acked, highest FROM ingest_devices WHERE device_id = ?", (A.device_id,)).fetchone()
    assert row == (8, 8)


def test_a_replay_in_the_same_batch_is_stored_once(h):
    m = good(A, 1)
    assert h.send((topic(A), m), (topic(A), m), (topic(A), wrap([m, m]))) == {A.device_id: 1}
    assert h.seqs(A) == [1] and h.count("duplicate", A) == 3


def test_rejections_before_the_signature_are_counted_and_never_acked(h):
    forged = bytearray(good(A, 1))
    forged[-1] ^= 1
    acks = h.send(
        (topic(A), bytes(forged)),                        # bad signature
        (topic(B), good(A, 2)),                           # A's reading on B's topic
        (topic(U), good(U, 1)),                           # unknown device
        (topic(R), good(R, 1)),                           # revoked device
        (f"metanoia/{GRID}/XYZ/tele", good(A, 3)),        # topic id not hex
        (f"metanoia/{GRID}/{'A1' * 9}/tele", good(A, 3)),  # upper-case hex is not our topic spelling
        (topic(A), b"\xd2\x84"),                          # truncated
        (topic(A), good(A, 4)[:-3] + b"\x00\x00\x00\x00"),  # trailing byte
        (topic(A), b"\xff" * 300),                        # oversize
    )
    assert acks == {}
    assert h.seqs(A) == [] and h.seqs(B) == []
    assert h.count("bad_signature", A) == 1
    assert h.count("topic_mismatch", B) == 1
    assert h.count("unknown_device") == 1 and h.count("unknown_device", U) == 0  # unknown ids: no per-id rows
    assert h.count("revoked_device", R) == 1
    assert h.count("bad_topic") == 2
    assert h.count("not_cbor", A) == 1 and h.count("trailing_data", A) == 1 and h.count("oversize", A) == 1


def test_wrong_tag_and_alg_are_rejected_with_the_decoder_reason(h):
    m = good(A, 1)
    assert m[:1] == b"\xd2"
    wrong_tag = b"\xd1" + m[1:]
    wrong_alg = b"\xd2\x84\x43\xa1\x01\x27" + m[6:]   # protected {1: -8} (EdDSA)
    h.send((topic(A), wrong_tag), (topic(A), wrong_alg))
    assert h.count("not_sign1_tag", A) == 1 and h.count("alg_not_es256", A) == 1
    assert h.seqs(A) == []


def test_clock_checks_quarantine_or_flag(h):
    t = int(NOW)
    acks = h.send((topic(A), wrap([
        good(A, 1, t=t - 60),                                   # fine
        good(A, 2, t=t + 3600),                                 # an hour ahead: quarantined
        good(A, 3, t=0, flags=0),                               # time 0 unflagged: quarantined
        good(A, 4, t=0, flags=FLAG_CLOCK_UNSYNCED),             # unsynced, flagged: stored
        good(A, 5, t=1_000_000_000),                            # 2001: far past: quarantined
        good(A, 6, t=t + 200),                                  # within the 300 s tolerance
    ])))
    assert h.seqs(A) == [1, 4, 6]
    assert h.quarantined(A) == {2: "clock_future", 3: "clock_unflagged", 5: "clock_past"}
    assert acks == {A.device_id: 6}  # quarantined seqs are accounted for: the device may drop them
    assert h.count("clock_future", A) == 1 and h.count("stored_clock_unsynced", A) == 1


def test_counters_backwards_are_quarantined_unless_flagged(h):
    h.send((topic(A), wrap([good(A, 1, imp=500), good(A, 2, imp=400), good(A, 3, imp=450, flags=FLAG_COUNTER_BACKWARDS),
                            good(A, 4, imp=460)])))
    assert h.seqs(A) == [1, 3, 4] and h.quarantined(A) == {2: "counter_backwards"}
    assert h.count("stored_counter_backwards", A) == 1


def test_counters_are_checked_against_both_neighbours_when_a_hole_is_filled(h):
    h.send((topic(A), wrap([good(A, 1, imp=100), good(A, 2, imp=110), good(A, 4, imp=130), good(A, 5, imp=140)])))
    h.send((topic(A), good(A, 3, imp=135)))   # above seq 4's counter: backwards at the next reading
    assert h.quarantined(A) == {3: "counter_backwards"}
    fresh = Harness(h.path)
    fresh.send((topic(B), wrap([good(B, 1, imp=100), good(B, 3, imp=130)])))
    assert fresh.send((topic(B), good(B, 2, imp=120))) == {B.device_id: 3}
    assert fresh.seqs(B) == [1, 2, 3]


def test_seq_zero_is_quarantined(h):
    assert h.send((topic(A), good(A, 0))) == {}
    assert h.quarantined(A) == {0: "bad_seq"} and h.seqs(A) == []


def test_a_different_signed_reading_for_a_stored_seq_is_a_conflict_not_a_second_row(h):
    h.send((topic(A), good(A, 1, imp=100)))
    assert h.send((topic(A), good(A, 1, imp=999))) == {A.device_id: 1}
    assert h.count("seq_conflict", A) == 1
    assert h.store.conn.execute("SELECT import_wh FROM readings").fetchall() == [(100,)]


def test_a_gap_stalls_the_ack_but_later_readings_are_stored(h):
    acks = h.send((topic(A), wrap([good(A, s) for s in (1, 2, 4, 5, 6)])))
    assert acks == {A.device_id: 2} and h.seqs(A) == [1, 2, 4, 5, 6]
    [gap] = h.store.gaps()
    assert (gap.contiguous, gap.first_missing, gap.next_present, gap.highest) == (2, 3, 4, 6)
    assert h.send((topic(A), good(A, 3))) == {A.device_id: 6}  # the hole filled: ack jumps
    assert h.store.gaps() == []


def test_state_survives_a_restart_of_the_writer(h):
    h.send((topic(A), wrap([good(A, s) for s in (1, 2, 4)])))
    again = Harness(h.path)
    assert again.send((topic(A), good(A, 2))) == {A.device_id: 2}
    assert again.count("duplicate", A) == 1
    assert again.send((topic(A), good(A, 3))) == {A.device_id: 4}


def test_operator_gap_close_moves_the_ack_and_a_late_reading_is_still_stored(h, capsys):
    h.send((topic(A), wrap([good(A, s) for s in (1, 2, 6, 7)])))
    with pytest.raises(StoreError):
        h.store.close_gap(A.device_id, 8)  # beyond anything the device produced
    with pytest.raises(StoreError):
        h.store.close_gap(U.device_id, 1)
    assert cli_main(["gateway", "gap", "list", "--db", h.path]) == 0
    assert "missing 3..5" in capsys.readouterr().out
    assert cli_main(["gateway", "gap", "close", A.device_id.hex(), "5", "--db", h.path]) == 0
    assert "acknowledgement now 7" in capsys.readouterr().out
    assert cli_main(["gateway", "gap", "close", A.device_id.hex(), "99", "--db", h.path]) == 1
    assert h.ing.poll_closures() == {A.device_id: 7}   # the running writer picks the record up
    assert h.store.conn.execute("SELECT closed_by FROM ingest_gap_closures").fetchall() == [("operator",)]
    assert h.send((topic(A), good(A, 4))) == {A.device_id: 7}  # late, but a real reading: kept
    assert h.seqs(A) == [1, 2, 4, 6, 7] and h.count("duplicate", A) == 0
    assert h.send((topic(A), good(A, 4))) == {A.device_id: 7} and h.count("duplicate", A) == 1


def test_online_state_is_tracked_for_known_devices_only(h):
    h.send((topic(A, "state"), b"online"), (topic(U, "state"), b"online"), (topic(B, "state"), b"bogus"))
    h.send((topic(A, "state"), b"offline"))
    rows = h.store.conn.execute("SELECT device_id, state FROM ingest_devices WHERE state IS NOT NULL").fetchall()
    assert rows == [(A.device_id, "offline")]


def test_topic_parsing():
    assert parse_topic(f"metanoia/g1/{'ab' * 9}/tele", "g1") == (bytes.fromhex("ab" * 9), "tele")
    for bad in (f"metanoia/g2/{'ab' * 9}/tele", f"metanoia/g1/{'ab' * 8}/tele", f"metanoia/g1/{'ab' * 9}",
                f"x/g1/{'ab' * 9}/tele", f"metanoia/g1/{'ag' * 9}/tele", f"metanoia/g1/ {'ab' * 9}/tele"):
        assert parse_topic(bad, "g1") is None


def test_clock_and_counter_rules_directly():
    p = ClockPolicy(max_future_s=300, max_age_s=86400)
    assert check_clock(int(NOW), 0, NOW, p) is None
    assert check_clock(int(NOW) + 301, 0, NOW, p) == "clock_future"
    assert check_clock(int(NOW) - 86401, 0, NOW, p) == "clock_past"
    assert check_clock(0, 0, NOW, p) == "clock_unflagged"
    assert check_clock(0, FLAG_CLOCK_UNSYNCED, NOW, p) is None
    assert check_counters((5, 5, 5), (5, 5, 5), 0) == (None, None)
    assert check_counters((5, 5, 5), (5, 4, 5), 0) == ("counter_backwards", None)
    assert check_counters((5, 5, 5), (5, 4, 5), FLAG_COUNTER_BACKWARDS) == (None, "stored_counter_backwards")
    assert check_counters(None, (1, 1, 1), 0, (0, 9, 9), 0) == ("counter_backwards", None)
    assert check_counters(None, (1, 1, 1), 0, (0, 9, 9), FLAG_COUNTER_BACKWARDS) == (None, None)


# -- hostile input (hypothesis) ------------------------------------------------------------

_fixed = [good(A, s) for s in range(1, 4)]
_hyp = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_hyp
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_are_rejected_and_counted_never_stored(h, data):
    before = sum(h.store.counters().values())
    assert h.send((topic(A), data)) == {}
    assert h.seqs(A) == []
    assert sum(h.store.counters().values()) == before + 1


@_hyp
@given(which=st.integers(0, 2), pos=st.integers(0, 200), flip=st.integers(1, 255),
       cut=st.integers(0, 5), extra=st.binary(max_size=3))
def test_a_mutated_reading_is_never_stored_unless_it_is_the_original(h, which, pos, flip, cut, extra):
    m = bytearray(_fixed[which])
    m[pos % len(m)] ^= flip
    mutated = bytes(m[:len(m) - cut]) + extra
    n_before = len(h.seqs(A))
    h.send((topic(A), mutated))
    rows = h.store.conn.execute("SELECT seq, raw FROM readings WHERE device_id = ?", (A.device_id,)).fetchall()
    for seq, raw in rows:  # whatever got in is a genuine reading, byte for byte as signed
        assert bytes(raw) == _fixed[seq - 1]
    if mutated != _fixed[which] and len(rows) > n_before:
        # only another encoding of the same signed meaning may pass (the decoder is lenient about encoding)
        assert decode_message(mutated)[0].raw == _fixed[which]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.integers(1, 40), min_size=1, max_size=60), batch=st.integers(1, 8))
def test_any_order_with_replays_stores_each_seq_once_and_acks_the_contiguous_prefix(tmp_path_factory, seqs, batch):
    hh = Harness(str(tmp_path_factory.mktemp("p") / "gw.db"))
    msgs = {s: good(A, s) for s in set(seqs)}
    ack = 0
    for i in range(0, len(seqs), batch):
        chunk = [msgs[s] for s in seqs[i:i + batch]]
        acks = hh.send((topic(A), chunk[0] if len(chunk) == 1 else wrap(chunk)))
        ack = acks.get(A.device_id, ack)
    distinct = set(seqs)
    assert hh.seqs(A) == sorted(distinct)
    expect = 0
    while expect + 1 in distinct:
        expect += 1
    assert ack == expect
    assert hh.count("duplicate", A) == len(seqs) - len(distinct)
    hh.store.close()


def test_a_flood_of_unknown_ids_adds_no_per_device_rows(h):
    for i in range(50):
        did = i.to_bytes(9, "big")
        h.send((topic(did), b"\xa0"), (topic(did, "state"), b"online"))
    assert h.store.conn.execute("SELECT COUNT(*) FROM ingest_counters").fetchone()[0] == 1
    assert h.store.conn.execute("SELECT COUNT(*) FROM ingest_devices").fetchone()[0] == 0


def test_verifier_pool_gives_the_same_results_as_in_process():
    items = [(A.device_id, A.public_key, wrap(_fixed)), (B.device_id, B.public_key, _fixed[0]),
             (A.device_id, A.public_key, b"\x00")]
    pool = Verifier(1)
    try:
        t0 = time.monotonic()
        assert pool.submit(items).result(30) == Verifier(0).submit(items).result()
        assert time.monotonic() - t0 < 30
    finally:
        pool.close()
