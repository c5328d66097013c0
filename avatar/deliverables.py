"""What a finished team batch hands over besides JSON: a ZIP of the avatars named by `external_id`, and a contact
sheet (the whole team on one image, a name under each face, failed members as labelled grey tiles)."""

from __future__ import annotations

import io
import math
import re
import zipfile
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

_UNSAFE = re.compile(r"[^A-Za-z0-9._ @+=-]+")   # ASCII only: none of <>:"/\|?*, control or path characters
# Device names Windows reserves whatever the extension (CON.png, nul.tar.gz): teams often unpack the ZIP there.
_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])( *)(\..*)?", re.IGNORECASE)


@dataclass(frozen=True)
class Member:
    """One batch item as the deliverables see it: its name, its avatar PNG (None when it failed) and why not."""

    external_id: str
    png: bytes | None
    error_code: str | None = None


def file_name(external_id: str, taken: set[str]) -> str:
    """A unique `<external_id>.png` that unpacks safely on Linux, macOS and Windows: characters outside a portable
    ASCII set replaced, no leading or trailing dots and spaces, Windows device names (CON, NUL, COM1, ...) prefixed
    with `_`; repeats numbered, case-insensitively."""
    base = re.sub(r"\.{2,}", "_", _UNSAFE.sub("_", external_id))[:120].strip(" .") or "item"
    if _RESERVED.fullmatch(base):
        base = f"_{base}"
    name, n = f"{base}.png", 2
    while name.lower() in taken:
        name, n = f"{base}_{n}.png", n + 1
    taken.add(name.lower())
    return name


def avatars_zip(members: list[Member]) -> bytes:
    """The successful avatars as `<external_id>.png` (PNG is already compressed: stored, not deflated)."""
    buf, taken = io.BytesIO(), set()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for member in members:
            if member.png is not None:
                archive.writestr(file_name(member.external_id, taken), member.png)
    return buf.getvalue()


def contact_sheet(members: list[Member], tile: int = 200, columns: int | None = None,
                  title: str | None = None) -> bytes:
    """A PNG grid of the team, a name under each avatar; failed members show their error code on a grey tile."""
    columns = columns or max(1, min(8, math.ceil(math.sqrt(max(len(members), 1)))))
    rows = max(1, math.ceil(len(members) / columns))
    label_h, pad = max(tile // 7, 14), max(tile // 20, 4)
    top = label_h + pad if title else 0
    sheet = Image.new("RGB", (columns * (tile + pad) + pad, top + rows * (tile + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(label_h - 4, 10))
    if title:
        draw.text((pad, pad // 2), title, fill=(40, 40, 40), font=font)
    for i, member in enumerate(members):
        x = pad + (i % columns) * (tile + pad)
        y = top + pad + (i // columns) * (tile + label_h + pad)
        if member.png is not None:
            face = Image.open(io.BytesIO(member.png)).convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(face, (x, y))
        else:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(215, 215, 215))
            _centred(draw, member.error_code or "failed", (x, y + tile // 2 - label_h // 2), tile, font,
                     (120, 40, 40))
        _centred(draw, member.external_id, (x, y + tile + 2), tile, font, (30, 30, 30))
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _centred(draw: ImageDraw.ImageDraw, text: str, at: tuple[int, int], width: int, font, fill) -> None:
    """`text` centred in `width` from `at`, shortened with an ellipsis when it does not fit."""
    shown = text
    while shown and draw.textlength(shown, font=font) > width - 4:
        shown = shown[:-1]
    if shown != text:
        shown = shown[:-1] + "…" if len(shown) > 1 else shown
    offset = (width - draw.textlength(shown, font=font)) / 2
    draw.text((at[0] + offset, at[1]), shown, fill=fill, font=font)
