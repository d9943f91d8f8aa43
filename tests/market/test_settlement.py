"""The settlement rule (gateway/market/settlement_rule.py): hand-computed cases and its invariants."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.market.settlement_rule import FillTerms, delivered_exact, money, settle


def fid(i: int) -> bytes:
    return bytes([i]) * 32


def rows(fills, export, imp):
    return [(a.delivered_wh, a.payment, a.refund) for a in settle(fills, export, imp)]


def test_full_delivery_pays_the_whole_escrow():
    f = [FillTerms(fid(1), "h2", "h3", 800, 8000)]
    assert rows(f, {"h2": 1000}, {"h3": 1000}) == [(800, 8000, 0)]


def test_maker_short_pays_for_what_it_exported_and_refunds_the_rest():
    f = [FillTerms(fid(1), "h2", "h3", 800, 8000)]
    assert rows(f, {"h2": 300}, {"h3": 1000}) == [(300, 3000, 5000)]


def test_taker_short_pays_for_what_it_imported():
    f = [FillTerms(fid(1), "h2", "h3", 800, 8000)]
    assert rows(f, {"h2": 1000}, {"h3": 500}) == [(500, 5000, 3000)]


def test_zero_delivery_is_a_full_refund_and_an_unknown_household_delivers_nothing():
    f = [FillTerms(fid(1), "h2", "h3", 800, 8000)]
    assert rows(f, {"h2": 0}, {"h3": 1000}) == [(0, 0, 8000)]
    assert rows(f, {}, {}) == [(0, 0, 8000)]
    assert rows([FillTerms(fid(1), None, "h3", 800, 8000)], {"h2": 900}, {"h3": 900}) == [(0, 0, 8000)]


def test_several_fills_per_household_share_pro_rata_and_reshare_what_one_cannot_use():
    # h2 sells 600 Wh to h3 and 900 Wh to h4 but exported 1000; h5 sells 400 Wh to h4; h4 imported 1000.
    # lambda rises for all: h2's export binds first at 1000 / 1500 = 2/3 -> 400 and 600 Wh;
    # then h4's import has 1000 - 600 = 400 left for h5's fill of 400: full.
    f = [FillTerms(fid(1), "h2", "h3", 600, 6000), FillTerms(fid(2), "h2", "h4", 900, 9001),
         FillTerms(fid(3), "h5", "h4", 400, 4000)]
    assert rows(f, {"h2": 1000, "h5": 400}, {"h3": 600, "h4": 1000}) == [
        (400, 4000, 2000), (600, 9001 * 600 // 900, 9001 - 6000), (400, 4000, 0)]
    # one maker, two takers: A imported only 20, so B gets the maker's other 80 (not just its half)
    g = [FillTerms(fid(1), "m", "A", 100, 1000), FillTerms(fid(2), "m", "B", 100, 1000)]
    assert rows(g, {"m": 100}, {"A": 20, "B": 100}) == [(20, 200, 800), (80, 800, 200)]


def test_rounding_remainder_goes_to_the_smaller_fill_id_and_payment_rounds_down():
    # three fills of 3 Wh on one 5 Wh meter: 5/3 each exactly -> 1 each, the 2 Wh left to ids 1 and 2
    f = [FillTerms(fid(i), "m", "t", 3, 10) for i in (3, 1, 2)]
    assert rows(f, {"m": 5}, {"t": 9}) == [(2, 6, 4), (2, 6, 4), (1, 3, 7)]
    assert money(10, 2, 3) == (6, 4)  # 6.67 rounds down, the refund takes the remainder


def test_bad_fills_are_refused():
    with pytest.raises(ValueError):
        FillTerms(fid(1), "a", "b", 0, 10)
    with pytest.raises(ValueError):
        settle([FillTerms(fid(1), "a", "b", 1, 1)] * 2, {}, {})
    with pytest.raises(ValueError):
        money(10, 4, 3)


HOUSES = ["a", "b", "c", "d"]
fill_st = st.tuples(st.sampled_from(HOUSES + [None]), st.sampled_from(HOUSES), st.integers(1, 2000),
                    st.integers(1, 10**20))


@settings(max_examples=300, deadline=None)
@given(st.lists(fill_st, min_size=1, max_size=12),
       st.dictionaries(st.sampled_from(HOUSES), st.integers(0, 5000)),
       st.dictionaries(st.sampled_from(HOUSES), st.integers(0, 5000)))
def test_conservation_caps_and_fairness_hold_for_any_fills(specs, export, imp):
    fills = [FillTerms(fid(i + 1), m, t, wh, noia) for i, (m, t, wh, noia) in enumerate(specs)]
    out = settle(fills, export, imp)
    assert [a.fill_id for a in out] == sorted(f.fill_id for f in fills)
    by = {f.fill_id: f for f in fills}
    for a in out:
        assert 0 <= a.delivered_wh <= a.ordered_wh
        assert a.payment + a.refund == a.noia == by[a.fill_id].noia  # money conserved per fill
        assert a.payment == a.noia * a.delivered_wh // a.ordered_wh
    for h in HOUSES:  # Wh paid for never exceeds Wh metered, on either side
        assert sum(a.delivered_wh for a in out if by[a.fill_id].maker_household == h) <= export.get(h, 0)
        assert sum(a.delivered_wh for a in out if by[a.fill_id].taker_household == h) <= imp.get(h, 0)
    # rounding moves less than 1 Wh per fill away from the exact fair allocation
    exact = dict(zip([f.fill_id for f in sorted(fills, key=lambda f: f.fill_id)],
                     delivered_exact(sorted(fills, key=lambda f: f.fill_id), export, imp)))
    for a in out:
        assert abs(Fraction(a.delivered_wh) - exact[a.fill_id]) < 1
    # the exact allocation is maximal: a fill below its order has a meter that is used up
    for f in fills:
        if exact[f.fill_id] < f.ordered_wh:
            full = []
            for side, h, metered in (("m", f.maker_household, export), ("t", f.taker_household, imp)):
                if h is None:
                    full.append(True)
                    continue
                used = sum(exact[g.fill_id] for g in fills
                           if (g.maker_household if side == "m" else g.taker_household) == h)
                full.append(used == metered.get(h, 0))
            assert any(full)
    # deterministic: the same inputs in another order give the same batch
    assert settle(list(reversed(fills)), export, imp) == out
