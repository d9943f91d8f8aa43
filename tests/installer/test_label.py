"""``metanoia device label``: A4 sheets of QR labels whose codes decode (zxing-cpp)
to the pairing URL, the contract with the gateway's /pair page."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import zxingcpp
from PIL import Image

from gateway.cli import main as metanoia
from gateway.devices import claim_hash_of
from gateway.installer import claim, label

GW = "https://gw.oak-court.example"

def key() -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    n = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return (n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")).hex()


def records(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        rec = {"device_id": f"0123{i:012x}ee", "public_key": key(), "claim_code": claim.new_claim_code(),
               "grid": "oak-court", "profile": "sdm630", "name": f"{101 + i}-A"}
        p = tmp_path / f"{rec['device_id']}.json"
        p.write_text(json.dumps(rec))
        out.append(p)
    return out


def decoded(path: Path) -> list[str]:
    return sorted(r.text for r in zxingcpp.read_barcodes(Image.open(path)) if r.format == zxingcpp.BarcodeFormat.QRCode)


def test_the_pairing_url_is_the_contract():
    assert label.pairing_url(GW + "/", "0123ee4f5d8c1a7b01", "7KQ2-M9XD-4T8P") == \
        "https://gw.oak-court.example/pair?d=0123ee4f5d8c1a7b01&c=7KQ2-M9XD-4T8P"
    u = urlsplit(label.pairing_url("http://192.168.10.2:8080/metanoia", "0123ee4f5d8c1a7b01", "a b&c"))
    assert u.path == "/metanoia/pair" and parse_qs(u.query) == {"d": ["0123ee4f5d8c1a7b01"], "c": ["a b&c"]}


def test_a_png_sheet_of_24_labels_decodes_back_to_every_url(tmp_path: Path, capsys):
    recs = records(tmp_path, 24)
    args = ["device", "label", "--gateway", GW, "--out", str(tmp_path / "labels.png")]
    for r in recs:
        args += ["--record", str(r)]
    assert metanoia(args) == 0
    assert "24 label(s) on 1 sheet(s)" in capsys.readouterr().out
    img = Image.open(tmp_path / "labels.png")
    assert img.size == (2480, 3508) and round(img.info["dpi"][0]) == 300  # A4 at 300 dpi
    want = []
    for r in recs:
        rec = json.loads(r.read_text())
        want.append(f"{GW}/pair?d={rec['device_id']}&c={rec['claim_code']}")
        # The code on the label is the one whose hash the gateway stores.
        assert claim_hash_of(parse_qs(urlsplit(want[-1]).query)["c"][0]) == claim_hash_of(rec["claim_code"])
    assert decoded(tmp_path / "labels.png") == sorted(want)


def test_more_labels_than_a_sheet_go_on_further_sheets_and_into_one_pdf(tmp_path: Path):
    recs = records(tmp_path, 26)
    labels = [label.load_label(r, GW) for r in recs]
    pages = label.render(labels, GW, skip=3)
    assert len(pages) == 2
    paths = label.write(pages, tmp_path / "sheet.png")
    assert [p.name for p in paths] == ["sheet.png", "sheet-2.png"]
    assert len(decoded(paths[0])) == 21 and len(decoded(paths[1])) == 5
    pdf = label.write(pages, tmp_path / "labels.pdf")[0]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"/Count 2" in data  # one PDF, two sheets
    import re

    box = [float(v) for v in re.search(rb"/MediaBox \[ ([\d. ]+) \]", data).group(1).split()]
    assert abs(box[2] / 72 * 25.4 - 210) < 1 and abs(box[3] / 72 * 25.4 - 297) < 1  # A4 in points
    # Each QR is big enough to scan from a label: modules of at least 0.5 mm.
    qr = label.qr_image(labels[0].url, round((label.A4_3X8.label_h_mm - 2 * label.A4_3X8.pad_mm) * label.MM))
    import segno

    modules = segno.make(labels[0].url, error="m", micro=False).symbol_size(border=2)[0]
    assert qr.width / modules / label.MM >= 0.5


def test_a_folder_of_records_gives_one_label_each_and_duplicates_are_refused(tmp_path: Path, capsys):
    (tmp_path / "records").mkdir()
    recs = records(tmp_path / "records", 3)
    out = tmp_path / "l.png"
    assert metanoia(["device", "label", "--record", str(tmp_path / "records"), "--gateway", GW, "--out", str(out)]) == 0
    assert len(decoded(out)) == 3
    assert metanoia(["device", "label", "--record", str(tmp_path / "records"), "--record", str(recs[0]),
                     "--gateway", GW, "--out", str(out)]) == 2
    assert "error [duplicate_record]" in capsys.readouterr().err


def test_the_skipped_positions_stay_blank(tmp_path: Path):
    labels = [label.load_label(r, GW) for r in records(tmp_path, 1)]
    page = label.render(labels, GW, skip=5)[0]
    w, h = round(70 * label.MM), round(37 * label.MM)
    first = page.crop((0, 0, w, h))
    assert first.getextrema() == (255, 255)  # position 1 is empty
    sixth_x, sixth_y = 2 * w, round((0.5 + 37) * label.MM)  # position 6: column 3, row 2
    assert page.crop((sixth_x, sixth_y, sixth_x + w, sixth_y + h)).getextrema()[0] == 0


@pytest.mark.parametrize("edit, reason", [
    (lambda r: r.pop("claim_code") and r.update(claim_hash="00" * 32), "no_claim_code"),
    (lambda r: r.update(device_id="0123"), "bad_device_id"),
    (lambda r: r.update(extra=1), "unknown_key"),
])
def test_records_without_what_a_label_needs_are_refused(tmp_path: Path, edit, reason, capsys):
    (path,) = records(tmp_path, 1)
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))
    assert metanoia(["device", "label", "--record", str(path), "--gateway", GW, "--out", str(tmp_path / "l.pdf")]) == 2
    assert capsys.readouterr().err.startswith(f"error [{reason}]")
    assert not (tmp_path / "l.pdf").exists()


def test_bad_gateway_url_and_output_format_are_refused(tmp_path: Path, capsys):
    (path,) = records(tmp_path, 1)
    assert metanoia(["device", "label", "--record", str(path), "--gateway", "gw.example", "--out",
                     str(tmp_path / "l.pdf")]) == 2
    assert "error [bad_url]" in capsys.readouterr().err
    assert metanoia(["device", "label", "--record", str(path), "--gateway", GW, "--out", str(tmp_path / "l.svg")]) == 2
    assert "error [bad_format]" in capsys.readouterr().err
