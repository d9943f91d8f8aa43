"""Pairing from the QR label's URL: signed out and back, checks, single use, household ids."""

from __future__ import annotations

from urllib.parse import quote

from gateway.devices import DeviceRegistry
from tests.web.kit import ORIGIN, Clock, add_device, client, csrf_of, make_web, pair, post, signup


def test_qr_link_signed_out_leads_through_signup_and_back(tmp_path) -> None:
    web = make_web(tmp_path)
    device, claim = add_device(web, "101-A")
    c = client(web)
    link = f"/pair?d={device}&c={claim}"
    r = c.get(link)
    assert r.status_code == 200 and device in r.text and "Create an account" in r.text
    assert f'/signup?next={quote(link, safe="")}' in r.text
    page = c.get("/signup", params={"next": link}).text
    r = c.post("/signup", data={"csrf": csrf_of(page), "login": "kim@example.com", "password": "amber-kettle-orbit-42",
                                "password2": "amber-kettle-orbit-42", "next": link}, headers={"origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/account/2fa?next=" + quote(link, safe="")
    r = c.get(link)
    assert r.status_code == 200 and "Add this meter?" in r.text and "101-A" in r.text
    r = c.post("/pair", data={"csrf": csrf_of(r.text), "d": device, "c": claim}, headers={"origin": ORIGIN})
    assert r.status_code == 200 and 'id="household">101-A<' in r.text
    rec = DeviceRegistry(web.store().conn).get(device)
    assert rec is not None and rec.household == "101-A" and rec.paired_at is not None
    assert web.store().accounts.by_login("kim@example.com").household == "101-A"  # type: ignore[union-attr]
    home = c.get("/home")
    assert home.status_code == 200 and device in home.text


def test_wrong_claim_code_is_refused_and_counted(tmp_path) -> None:
    web = make_web(tmp_path)
    device, claim = add_device(web)
    user = signup(web, "kim@example.com")
    r = user.c.get(f"/pair?d={device}&c=WRONG-{claim}")
    assert r.status_code == 403 and 'data-reason="claim_failed"' in r.text
    page = user.c.get("/home").text
    r = user.c.post("/pair", data={"csrf": csrf_of(page), "d": device, "c": "guess-guess"}, headers={"origin": ORIGIN})
    assert r.status_code == 403
    assert web.guard.counters["claim_failed"] == 2
    assert DeviceRegistry(web.store().conn).get(device).household is None  # type: ignore[union-attr]


def test_bad_links_get_a_specific_error(tmp_path) -> None:
    web = make_web(tmp_path)
    c = client(web)
    for q in ("?d=zz&c=abcdefgh", "?c=abcdefgh", "?d=00112233445566778899&c=abcdefgh", "?d=001122334455667788"):
        r = c.get("/pair" + q)
        assert r.status_code == 400 and 'data-reason="bad_pair_link"' in r.text


def test_typed_label_text_pairs_like_the_qr_link(tmp_path) -> None:
    """No QR at hand: /pair offers a form; the id may keep the label's spaces and
    the code may be typed in lower case with O/I/L for 0/1/1."""
    from gateway.installer.claim import group_device_id, new_claim_code
    web = make_web(tmp_path)
    code = new_claim_code()
    device, claim = add_device(web, "101-A", claim=code)
    kim = signup(web, "kim@example.com")
    form = kim.c.get("/pair")
    assert form.status_code == 200 and 'name="d"' in form.text and 'name="c"' in form.text
    typed = code.lower().replace("0", "o").replace("1", "l").replace("-", " ")
    r = kim.c.get("/pair", params={"d": group_device_id(device), "c": typed})
    assert r.status_code == 200 and "Add this meter?" in r.text
    r = kim.c.post("/pair", data={"csrf": csrf_of(r.text), "d": group_device_id(device), "c": typed},
                   headers={"origin": ORIGIN})
    assert r.status_code == 200 and 'id="household">101-A<' in r.text
    assert DeviceRegistry(web.store().conn).get(device).household == "101-A"  # type: ignore[union-attr]
    # a code that differs in one real symbol is still wrong
    d2, c2 = add_device(web, "102-B", claim=new_claim_code())
    wrong = ("Z" if c2[0] != "Z" else "Y") + c2[1:]
    assert kim.c.get("/pair", params={"d": d2, "c": wrong}).status_code == 403


def test_claim_code_is_single_use_and_a_second_meter_joins_the_same_household(tmp_path) -> None:
    web = make_web(tmp_path)
    d1, c1 = add_device(web, "101-A")
    d2, c2 = add_device(web, "101-A-pv")
    kim = signup(web, "kim@example.com")
    assert pair(kim, d1, c1).status_code == 200
    assert pair(kim, d2, c2).status_code == 200
    assert DeviceRegistry(web.store().conn).get(d2).household == "101-A"  # type: ignore[union-attr]
    lee = signup(web, "lee@example.com")
    r = lee.c.get(f"/pair?d={d1}&c={c1}")
    assert r.status_code == 409 and "already paired to another home" in r.text and "101-A" not in r.text
    r = lee.c.post("/pair", data={"csrf": csrf_of(r.text), "d": d1, "c": c1}, headers={"origin": ORIGIN})
    assert r.status_code == 409 and 'data-reason="claim_used"' in r.text


def test_household_ids_flat_name_taken_or_missing(tmp_path) -> None:
    web = make_web(tmp_path)
    d1, c1 = add_device(web, "102-B")
    d2, c2 = add_device(web, "102-B")   # a second meter labelled with the same flat
    d3, c3 = add_device(web, None)      # no label
    kim, lee, park = (signup(web, f"{n}@example.com") for n in ("kim", "lee", "park"))
    assert pair(kim, d1, c1).status_code == 200
    r = pair(lee, d2, c2)
    assert r.status_code == 409 and 'data-reason="household_taken"' in r.text
    reg = DeviceRegistry(web.store().conn)
    assert reg.get(d2).household is None  # type: ignore[union-attr]  # nothing half-done
    assert pair(park, d3, c3).status_code == 200
    park_acc = web.store().accounts.by_login("park@example.com")
    assert park_acc is not None and reg.get(d3).household == f"h{park_acc.id}"  # type: ignore[union-attr]


def test_operator_cannot_pair(tmp_path) -> None:
    from tests.web.kit import make_operator
    web = make_web(tmp_path)
    device, claim = add_device(web)
    ops = make_operator(web)
    r = ops.c.get(f"/pair?d={device}&c={claim}")
    assert r.status_code == 403


def test_claim_attempts_are_rate_limited_per_account_and_per_device(tmp_path) -> None:
    clock = Clock()
    web = make_web(tmp_path, clock=clock)
    device, claim = add_device(web)
    other, _ = add_device(web, "103-C")
    kim = signup(web, "kim@example.com")
    codes = [kim.c.get(f"/pair?d={device}&c=guess-{i:04d}").status_code for i in range(7)]
    assert codes[:5] == [403] * 5 and codes[5:] == [429, 429]
    r = kim.c.get(f"/pair?d={other}&c=guess-other")  # the account's bucket is empty too
    assert r.status_code == 429 and "retry-after" in r.headers
    lee = signup(web, "lee@example.com")
    r = lee.c.get(f"/pair?d={device}&c={claim}")  # the device's bucket is empty: even the right code waits
    assert r.status_code == 429
    clock.t += 120
    assert lee.c.get(f"/pair?d={device}&c={claim}").status_code == 200
    assert web.guard.counters["claim_rate_limited"] == 4


def test_the_label_url_of_the_installer_tools_opens_the_pairing_page(tmp_path) -> None:
    """The contract with ``metanoia device label``: its QR content, with codes that need quoting."""
    from gateway.installer.label import pairing_url
    web = make_web(tmp_path)
    for claim in ("K7QX-42RM-9TZD", "a+b/c=d&e f%"):
        device, claim = add_device(web, None, claim=claim)
        user = signup(web, f"{device}@example.com")
        url = pairing_url(web.config.public_url, device, claim)
        r = user.c.get(url)
        assert r.status_code == 200 and "Add this meter?" in r.text, claim
        assert pair(user, device, claim).status_code == 200
