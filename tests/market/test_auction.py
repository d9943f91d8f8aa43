"""The uniform-price call auction cleared by hand on small books, its properties, and the RFQ book rule."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.market.mechanisms import (BookOrder, CallAuction, MechanismError, Rfq, books_from_net, by_name,
                                       compare)

T = 1_750_001_400


def bid(i: str, wh: int, p: int, seq: int = 0) -> BookOrder:
    return BookOrder(f"b{i}", f"buyer{i}", "buy", wh, p, seq)


def ask(i: str, wh: int, p: int, seq: int = 0) -> BookOrder:
    return BookOrder(f"a{i}", f"seller{i}", "sell", wh, p, seq)


def pairs(c):  # (bid, ask, wh, price)
    return [(m.bid_id, m.ask_id, m.wh, m.price_per_wh) for m in c.matches]


def test_no_overlap_matches_nothing_and_says_why() -> None:
    c = CallAuction().clear(T, [bid("1", 100, 90)], [ask("1", 100, 100)])
    assert c.matches == () and c.price_per_wh is None and c.volume_wh == 0
    assert "best bid 90, best ask 100" in c.explanation[0]


def test_exact_overlap_clears_at_the_common_price() -> None:
    c = CallAuction().clear(T, [bid("1", 100, 100)], [ask("1", 100, 100)])
    assert pairs(c) == [("b1", "a1", 100, 100)] and c.price_per_wh == 100


def test_full_match_prices_in_the_middle_of_the_range_the_unmatched_orders_leave() -> None:
    # bids 10@100, 10@50; asks 10@40, 10@60: 10 Wh trade; at any price in [50, 60] supply meets demand
    c = CallAuction().clear(T, [bid("1", 10, 100), bid("2", 10, 50)], [ask("1", 10, 40), ask("2", 10, 60)])
    assert pairs(c) == [("b1", "a1", 10, 55)]
    assert CallAuction(k=__import__("fractions").Fraction(0)).clear(
        T, [bid("1", 10, 100), bid("2", 10, 50)], [ask("1", 10, 40), ask("2", 10, 60)]).price_per_wh == 50


def test_partial_marginal_bid_sets_the_price_at_the_bid() -> None:
    # demand 300 @ 120, supply 100 @ 80 + 100 @ 100: the bid is filled 200 of 300, excess demand -> price = bid
    c = CallAuction().clear(T, [bid("1", 300, 120)], [ask("1", 100, 80), ask("2", 100, 100)])
    assert pairs(c) == [("b1", "a1", 100, 120), ("b1", "a2", 100, 120)]
    assert c.filled("b1") == 200


def test_partial_marginal_ask_sets_the_price_at_the_ask() -> None:
    c = CallAuction().clear(T, [bid("1", 100, 150), bid("2", 50, 130)], [ask("1", 400, 110)])
    assert pairs(c) == [("b1", "a1", 100, 110), ("b2", "a1", 50, 110)]
    assert c.filled("a1") == 150


def test_a_hand_cleared_book_with_several_steps() -> None:
    bids = [bid("1", 200, 140), bid("2", 100, 120), bid("3", 300, 100)]
    asks = [ask("1", 150, 90), ask("2", 100, 110), ask("3", 200, 130)]
    c = CallAuction().clear(T, bids, asks)
    # b1-a1 150, b1-a2 50, b2-a2 50; then b2 (50 left) @120 vs a3 @130: stop.
    # marginal bid 120, marginal ask 110; next bid is b2 itself (120), next ask a3 (130): [120, 120]
    assert pairs(c) == [("b1", "a1", 150, 120), ("b1", "a2", 50, 120), ("b2", "a2", 50, 120)]
    assert c.volume_wh == 250 and c.price_per_wh == 120


def test_price_ties_go_to_the_earlier_order_then_the_id() -> None:
    asks = [BookOrder("late", "s1", "sell", 100, 100, seq=5), BookOrder("early", "s2", "sell", 100, 100, seq=1)]
    c = CallAuction().clear(T, [bid("1", 100, 120)], asks)
    assert pairs(c) == [("b1", "early", 100, 100)]  # the unmatched "late" ask bounds the price
    same = [BookOrder("z", "s1", "sell", 100, 100, 1), BookOrder("y", "s2", "sell", 100, 100, 1)]
    assert pairs(CallAuction().clear(T, [bid("1", 100, 100)], same)) == [("b1", "y", 100, 100)]
    bids = [BookOrder("bx", "h1", "buy", 100, 100, 2), BookOrder("bw", "h2", "buy", 100, 100, 1)]
    assert pairs(CallAuction().clear(T, bids, [ask("1", 100, 90)]))[0][0] == "bw"


def test_bad_books_are_refused_with_a_reason() -> None:
    with pytest.raises(MechanismError) as e:
        CallAuction().clear(T, [bid("1", 1, 1)], [bid("2", 1, 1)])
    assert e.value.reason == "wrong_side"
    with pytest.raises(MechanismError) as e:
        CallAuction().clear(T, [bid("1", 1, 1), bid("1", 2, 1)], [])
    assert e.value.reason == "duplicate_id"
    with pytest.raises(MechanismError):
        BookOrder("x", "h", "buy", 0, 1)
    with pytest.raises(MechanismError) as e:
        by_name("dutch")
    assert e.value.reason == "unknown"


book = st.lists(st.tuples(st.integers(1, 500), st.integers(1, 300), st.integers(0, 5)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(book, book)
def test_auction_properties(bs, as_) -> None:
    bids = [BookOrder(f"b{i}", f"hb{i}", "buy", wh, p, s) for i, (wh, p, s) in enumerate(bs)]
    asks = [BookOrder(f"a{i}", f"ha{i}", "sell", wh, p, s) for i, (wh, p, s) in enumerate(as_)]
    c = CallAuction().clear(T, bids, asks)
    lim = {o.id: o for o in bids + asks}
    used: Counter[str] = Counter()
    for m in c.matches:
        assert m.price_per_wh == c.price_per_wh                       # one price for all
        assert lim[m.ask_id].price_per_wh <= m.price_per_wh <= lim[m.bid_id].price_per_wh
        used[m.bid_id] += m.wh
        used[m.ask_id] += m.wh
    for o in bids + asks:
        assert used[o.id] <= o.wh                                      # nobody trades more than offered
    assert sum(used[b.id] for b in bids) == sum(used[a.id] for a in asks) == c.volume_wh
    if c.price_per_wh is not None:                                     # no unmatched order would trade at the price
        p = c.price_per_wh
        assert not any(used[b.id] < b.wh and b.price_per_wh > p for b in bids) or \
            not any(used[a.id] < a.wh and a.price_per_wh < p for a in asks)
        assert all(used[b.id] == b.wh for b in bids if b.price_per_wh > p) or \
            all(used[a.id] == a.wh for a in asks if a.price_per_wh <= p)
    else:
        assert not bids or not asks or max(b.price_per_wh for b in bids) < min(a.price_per_wh for a in asks)
    # RFQ (pay-as-ask) keeps the same limits and conservation, at a price per match
    r = Rfq().clear(T, bids, asks)
    used = Counter()
    for m in r.matches:
        assert lim[m.ask_id].price_per_wh == m.price_per_wh <= lim[m.bid_id].price_per_wh
        used[m.bid_id] += m.wh
        used[m.ask_id] += m.wh
    assert all(used[o.id] <= o.wh for o in bids + asks)
    assert sum(used[b.id] for b in bids) == sum(used[a.id] for a in asks) == r.volume_wh


def test_rfq_book_rule_is_pay_as_ask_in_arrival_order() -> None:
    bids = [bid("1", 150, 130, seq=2), bid("2", 100, 200, seq=1)]
    asks = [ask("1", 100, 90), ask("2", 100, 120)]
    c = Rfq().clear(T, bids, asks)
    # b2 came first: takes a1 100 @90; b1 then a2 100 @120 (50 uncovered)
    assert pairs(c) == [("b2", "a1", 100, 90), ("b1", "a2", 100, 120)]
    assert c.price_per_wh is None and c.average_price == 105


def test_compare_runs_both_on_the_same_surplus_and_deficit() -> None:
    net = {"h1": 800, "h2": 300, "h3": -500, "h4": -400, "h5": 0}
    bids, asks = books_from_net(net, ask_price={"h1": 100, "h2": 140}, bid_price={"h3": 200, "h4": 150},
                                reserve_wh={"h1": 100})
    r = compare(T, bids, asks, net)
    assert r["supply_wh"] == 1000 and r["demand_wh"] == 900
    assert r["auction"]["volume_wh"] == 900 and r["auction"]["price_per_wh"] == 140
    assert r["rfq"]["volume_wh"] == 900
    h = r["auction"]["households"]
    assert h["h1"]["sold_wh"] == 700 and h["h1"]["unsold_surplus_wh"] == 100   # the reserve stays home
    assert h["h3"]["bought_wh"] == 500 and h["h3"]["paid_noia"] == str(500 * 140)
    assert h["h5"] == {"net_wh": 0, "sold_wh": 0, "bought_wh": 0, "received_noia": "0", "paid_noia": "0",
                       "unsold_surplus_wh": 0, "uncovered_deficit_wh": 0}
    # RFQ: h3 (seq 2) and h4 (seq 3) buy at the asks' prices: h3 takes h1's 700 @100? No: h3 needs 500
    rh = r["rfq"]["households"]
    assert rh["h3"]["paid_noia"] == str(500 * 100) and rh["h4"]["paid_noia"] == str(200 * 100 + 200 * 140)
