"""``metanoia device label``: QR labels for devices, several per A4 sheet.

Each label carries the pairing URL as a QR code (segno), the flat's name, the
device id grouped by four for reading aloud, and the claim code in text for
typing when a phone cannot scan. The URL format is the contract with the
gateway's pairing page: ``{gateway_url}/pair?d={device_id_hex}&c={claim_code}``.
Sheets are 300 dpi images written as PNG (one file per sheet) or one PDF.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import segno
from PIL import Image, ImageDraw, ImageFont

from gateway.devices import BadRecordError, record_from_dict
from gateway.installer import InstallerError
from gateway.installer.claim import group_device_id
from gateway.installer.site import check_gateway_url

DPI = 300
MM = DPI / 25.4


@dataclass(frozen=True)
class Sheet:
    """Label stock as data: A4 with 3 x 8 labels of 70 x 37 mm (e.g. Avery 3474)."""

    width_mm: float = 210.0
    height_mm: float = 297.0
    cols: int = 3
    rows: int = 8
    label_w_mm: float = 70.0
    label_h_mm: float = 37.0
    top_mm: float = 0.5
    left_mm: float = 0.0
    pad_mm: float = 3.0

    @property
    def per_sheet(self) -> int:
        return self.cols * self.rows


A4_3X8 = Sheet()
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)


class LabelError(InstallerError):
    pass


@dataclass(frozen=True)
class Label:
    device_id: str
    claim_code: str
    name: str | None
    url: str


def pairing_url(gateway_url: str, device_id_hex: str, claim_code: str) -> str:
    """The QR's content: the gateway's pairing page with the device id and claim code."""
    return f"{check_gateway_url(gateway_url)}/pair?d={device_id_hex}&c={quote(claim_code, safe='-')}"


def load_label(path: Path, gateway_url: str) -> Label:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise LabelError(f"cannot read {path}: {e.strerror}", "no_file") from None
    except ValueError:
        raise LabelError(f"{path} is not JSON", "not_json") from None
    try:
        rec = record_from_dict(data)
    except BadRecordError as e:
        raise LabelError(f"{path}: {e}", e.reason or "bad_record") from None
    if not isinstance(data.get("claim_code"), str):
        raise LabelError(f"{path} has no claim_code: a label needs the code itself, which only the "
                         "installer's record has (the gateway keeps its hash)", "no_claim_code")
    did = rec.device_id.hex()
    return Label(did, data["claim_code"], rec.name, pairing_url(gateway_url, did, data["claim_code"]))


def _font(size: int, bold: bool = False, mono: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSansMono" if mono else "DejaVuSans"
    name += "-Bold.ttf" if bold else ".ttf"
    for d in FONT_DIRS:
        p = Path(d) / name
        if p.is_file():
            return ImageFont.truetype(str(p), size)
    return ImageFont.load_default(size)


def qr_image(url: str, size_px: int) -> Image.Image:
    qr = segno.make(url, error="m", micro=False)
    modules = qr.symbol_size(border=2)[0]
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=max(1, size_px // modules), border=2)
    buf.seek(0)
    return Image.open(buf).convert("L")


def draw_label(img: Image.Image, lab: Label, x: int, y: int, sheet: Sheet, host: str) -> None:
    w, h = round(sheet.label_w_mm * MM), round(sheet.label_h_mm * MM)
    pad = round(sheet.pad_mm * MM)
    qr = qr_image(lab.url, h - 2 * pad)
    img.paste(qr, (x + pad, y + (h - qr.height) // 2))
    d = ImageDraw.Draw(img)
    tx = x + pad + qr.width + pad // 2
    ty = y + pad
    d.text((tx, ty), "Metanoia meter", font=_font(28, bold=True), fill=0)
    ty += 42
    if lab.name:
        d.text((tx, ty), lab.name[:14], font=_font(52, bold=True), fill=0)
        ty += 70
    d.text((tx, ty), "Device", font=_font(22), fill=0)
    d.text((tx, ty + 26), group_device_id(lab.device_id), font=_font(28, mono=True), fill=0)
    ty += 74
    d.text((tx, ty), "Claim code", font=_font(22), fill=0)
    d.text((tx, ty + 26), lab.claim_code, font=_font(36, bold=True, mono=True), fill=0)
    ty += 84
    d.text((tx, min(ty, y + h - pad - 24)), f"Scan to pair: {host}"[:40], font=_font(20), fill=0)


def render(labels: list[Label], gateway_url: str, sheet: Sheet = A4_3X8, skip: int = 0) -> list[Image.Image]:
    """Sheets (grayscale, 300 dpi); ``skip`` leaves the first positions of the first
    sheet empty (a sheet already partly used)."""
    if not labels:
        raise LabelError("no records to print", "no_records")
    if not 0 <= skip < sheet.per_sheet:
        raise LabelError(f"--skip must be 0-{sheet.per_sheet - 1}", "bad_skip")
    host = gateway_url.split("://", 1)[1]
    size = (round(sheet.width_mm * MM), round(sheet.height_mm * MM))
    pages: list[Image.Image] = []
    for i, lab in enumerate(labels, start=skip):
        slot = i % sheet.per_sheet
        if slot == 0 or not pages:
            pages.append(Image.new("L", size, 255))
        col, row = slot % sheet.cols, slot // sheet.cols
        x = round((sheet.left_mm + col * sheet.label_w_mm) * MM)
        y = round((sheet.top_mm + row * sheet.label_h_mm) * MM)
        draw_label(pages[-1], lab, x, y, sheet, host)
    return pages


def write(pages: list[Image.Image], out: Path) -> list[Path]:
    """One PDF with every sheet, or one PNG per sheet (``out``, then ``out-2.png`` ...)."""
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pdf":
        pages[0].save(out, "PDF", resolution=DPI, save_all=True, append_images=pages[1:])
        return [out]
    if suffix == ".png":
        paths = [out if n == 0 else out.with_name(f"{out.stem}-{n + 1}.png") for n in range(len(pages))]
        for p, page in zip(paths, pages):
            page.save(p, "PNG", dpi=(DPI, DPI))
        return paths
    raise LabelError(f"{out}: write .pdf or .png", "bad_format")
