"""The picture of what was tagged: one self-contained HTML page, a thumbnail per frame with its tags.

``xrayscatter predict DIR/ --html report.html`` and ``xrayscatter watch DIR/ --html report.html``
write it. Each frame is shown as the model sees it — ``log1p(max(counts, 0)) / log1p(65535)``,
missing pixels 0, padded to a centred square and shrunk to the model's input size — on a fixed
0–1 colour scale (viridis), beside its tags (score ≥ threshold) and every attribute's score.
The page sorts by any attribute's score, filters by attribute (tagged / not tagged / score ≥ x)
and by file name, and pages through the frames (plain HTML and a little JavaScript, no network).

Size: a thumbnail is 8–15 kB (8-bit palette PNG, base64). The page stays under ``max_bytes``
(default 45 MB): thumbnails are embedded for at most ``max_thumbnails`` frames and only while the
page is within budget — the first frames for ``predict``, the newest for ``watch`` — and every
frame still has its row. The page is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from xrayscatter.files import write_atomically

THUMBNAIL_SIZE = 128  # px, when the model does not say its input size
MAX_THUMBNAIL_SIZE = 256
MAX_THUMBNAILS = 2000
MAX_BYTES = 45_000_000  # the page stays below ~50 MB
LOG_COUNT_SCALE = math.log1p(65535.0)  # = xrayscatter.normalization.LOG_COUNT_SCALE (kept free of TensorFlow)
_PALETTE: list[int] | None = None


def _palette() -> list[int]:
    global _PALETTE
    if _PALETTE is None:
        from matplotlib import colormaps

        _PALETTE = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8).ravel().tolist()
    return _PALETTE


def thumbnail_size_for(model) -> int:
    """The model's input size (what it sees), within [64, 256]; 128 when unknown."""
    size = getattr(model, "input_size", None)
    try:
        return int(min(MAX_THUMBNAIL_SIZE, max(64, int(size))))
    except (TypeError, ValueError):
        return THUMBNAIL_SIZE


def model_view(counts: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(H, W) raw counts → (size, size) float32 in [0, ~1]: the log normalisation of the model, missing 0,
    padded to a centred square, shrunk by block means then bilinear (like the model's antialiased resize)."""
    from PIL import Image

    height, width = counts.shape
    valid = np.isfinite(counts) & (counts > 0)
    x = np.log1p(np.where(valid, counts, 0.0), dtype=np.float32) / np.float32(LOG_COUNT_SCALE)
    side = max(height, width)
    square = np.zeros((side, side), np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = x
    factor = side // size
    if factor > 1:
        n = (side // factor) * factor
        square = square[:n, :n].reshape(n // factor, factor, n // factor, factor).mean(axis=(1, 3))
    if square.shape[0] != size:
        square = np.asarray(Image.fromarray(square, "F").resize((size, size), Image.BILINEAR))
    return square


def thumbnail_png(counts: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    """The model's view of a frame as an 8-bit palette PNG (viridis, fixed scale 0–1)."""
    from PIL import Image

    view = model_view(counts, size)
    indices = np.clip(view * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = Image.frombytes("P", (size, size), indices.tobytes())
    image.putpalette(_palette())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the page
def write_contact_sheet(path: str | Path, results: Sequence, attributes: Sequence[str], thresholds: Sequence[float],
                        *, score_name: str = "probability", title: str = "xrayscatter", subtitle: str = "",
                        newest_first: bool = False, max_bytes: int = MAX_BYTES,
                        max_thumbnails: int = MAX_THUMBNAILS) -> dict:
    """Write the page for ``results`` (``predict.ImageResult``-like: path, frame, error, scores, decisions,
    header, thumbnail, stacked) atomically; returns what it holds.

    Args:
        newest_first: give the thumbnail budget to the last results (``watch``) instead of the first.
        max_bytes: the page's size limit; rows are dropped (the oldest, or the last for ``predict``) only
            if the rows alone would exceed it.

    Returns:
        ``{"path", "frames", "rows", "thumbnails", "bytes"}``.
    """
    path = Path(path)
    rows, images = [], {}
    for result in results:
        scores = getattr(result, "scores", None)
        decisions = getattr(result, "decisions", None)
        rows.append([
            str(result.path), _frame_label(result), result.error or "",
            [round(float(s), 3) for s in scores] if scores is not None else None,
            "".join(str(int(d)) for d in decisions) if decisions is not None else "",
            _header_text(getattr(result, "header", None)),
        ])
    total = len(rows)
    row_bytes = [len(json.dumps(r)) + 1 for r in rows]
    budget = max_bytes - 40_000  # the page's own HTML, CSS and script
    kept = range(total)
    if sum(row_bytes) > budget // 2:  # rows take at most half; thumbnails the rest
        limit, used = [], 0
        order = range(total - 1, -1, -1) if newest_first else range(total)
        for i in order:
            if used + row_bytes[i] > budget // 2:
                break
            used += row_bytes[i]
            limit.append(i)
        kept = sorted(limit)
    kept = list(kept)
    used = sum(row_bytes[i] for i in kept)
    thumbs = 0
    order = reversed(kept) if newest_first else kept
    for i in order:
        thumbnail = getattr(results[i], "thumbnail", None)
        if thumbnail is None or thumbs >= max_thumbnails:
            continue
        encoded = base64.b64encode(thumbnail).decode("ascii")
        if used + len(encoded) + 40 > budget:
            break
        images[str(i)] = encoded
        used += len(encoded) + 40
        thumbs += 1
    data = {
        "attributes": list(attributes),
        "thresholds": [round(float(t), 4) for t in thresholds],
        "score": score_name,
        "rows": [[i] + rows[i] for i in kept],
        "images": images,
        "total": total,
    }
    note = []
    if len(kept) < total:
        note.append(f"{total - len(kept)} of {total} frames left out to keep the page under "
                    f"{max_bytes / 1e6:.0f} MB ({'the oldest' if newest_first else 'the last'}; all are in the "
                    "output file)")
    if thumbs < len(kept):
        note.append(f"thumbnails for {thumbs} of {len(kept)} frames ({'the newest' if newest_first else 'the first'}; "
                    f"at most {max_thumbnails} and {max_bytes / 1e6:.0f} MB)")
    page = _PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle),
                        note=html.escape("; ".join(note)), created=time.strftime("%Y-%m-%d %H:%M:%S"),
                        data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))
    write_atomically(path, page)
    return {"path": str(path), "frames": total, "rows": len(kept), "thumbnails": thumbs, "bytes": len(page)}


def _frame_label(result) -> str:
    frame = getattr(result, "frame", None)
    if frame is None or not getattr(result, "stacked", False):
        return ""
    return str(frame)


def _header_text(header: dict | None) -> str:
    if not header:
        return ""
    parts = []
    if "beam_x" in header and "beam_y" in header:
        parts.append(f"beam ({header['beam_x']:.1f}, {header['beam_y']:.1f}) px")
    if "wavelength_angstrom" in header:
        parts.append(f"λ {header['wavelength_angstrom']:.4g} Å")
    if "distance_m" in header:
        parts.append(f"{header['distance_m']:.4g} m")
    return ", ".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 13px/1.35 system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }}
header {{ position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 12px; z-index: 2; }}
h1 {{ font-size: 16px; margin: 0 0 2px; }}
.sub, .note {{ color: #555; font-size: 12px; }}
.note {{ color: #8a4b00; }}
.controls {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-top: 6px; }}
.controls label {{ white-space: nowrap; }}
input[type=number] {{ width: 4.5em; }}
#grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 8px; padding: 10px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 6px; overflow: hidden; }}
.card img, .card .noimg {{ width: 100%; aspect-ratio: 1; image-rendering: pixelated; display: block; background: #440154; }}
.card .noimg {{ background: #ddd; color: #777; display: flex; align-items: center; justify-content: center;
  font-size: 11px; text-align: center; }}
.name {{ font-family: ui-monospace, monospace; font-size: 11px; word-break: break-all; margin: 4px 0 2px; }}
.tags span {{ display: inline-block; background: #e3f1e3; border-radius: 3px; padding: 0 4px; margin: 1px 2px 1px 0; }}
.tags .none {{ background: none; color: #888; }}
.err {{ color: #b00; font-size: 12px; }}
.hdr {{ color: #666; font-size: 11px; }}
details {{ font-size: 11px; color: #444; }}
details table {{ border-collapse: collapse; width: 100%; }}
details td {{ padding: 0 2px; }} details td.v {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.yes td {{ font-weight: 600; }}
.pager {{ padding: 0 12px 16px; }}
button {{ margin: 0 2px; }}
</style></head><body>
<header>
<h1>{title}</h1>
<div class="sub">{subtitle} · written {created} · thumbnails: log1p(counts)/log1p(65535) as the model sees it,
0&nbsp;(missing, padding) to 1 on the viridis scale</div>
<div class="note">{note}</div>
<div class="controls">
<label>sort <select id="sort"><option value="">file order</option></select></label>
<label>attribute <select id="attr"><option value="">any</option></select></label>
<label><select id="mode"><option value="yes">tagged</option><option value="no">not tagged</option>
<option value="min">score ≥</option></select> <input id="min" type="number" step="0.05" min="0" max="1" value="0.5"></label>
<label>file contains <input id="text" type="search" size="14"></label>
<label><input id="errors" type="checkbox" checked> unreadable frames</label>
<label>per page <select id="per"><option>50</option><option selected>100</option><option>200</option>
<option>500</option></select></label>
<span id="count"></span>
</div></header>
<div id="grid"></div>
<div class="pager" id="pager"></div>
<script id="data" type="application/json">{data}</script>
<script>
(function () {{
  const D = JSON.parse(document.getElementById("data").textContent);
  const A = D.attributes, T = D.thresholds;
  const $ = (id) => document.getElementById(id);
  for (const [i, a] of A.entries()) {{
    $("sort").add(new Option(a + " (" + D.score + ", high first)", String(i)));
    $("attr").add(new Option(a, String(i)));
  }}
  let page = 0;
  function esc(s) {{ return String(s).replace(/[&<>"]/g, (c) => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}}[c])); }}
  function selected() {{
    const attr = $("attr").value, mode = $("mode").value, min = parseFloat($("min").value) || 0;
    const text = $("text").value.toLowerCase(), errors = $("errors").checked, sort = $("sort").value;
    let rows = D.rows.filter((r) => {{
      if (text && !(r[1] + "#" + r[2]).toLowerCase().includes(text)) return false;
      if (r[3]) return errors && attr === "";
      if (attr === "") return true;
      const k = +attr;
      if (mode === "yes") return r[5][k] === "1";
      if (mode === "no") return r[5][k] === "0";
      return r[4][k] >= min;
    }});
    if (sort !== "") {{
      const k = +sort;
      rows = rows.slice().sort((a, b) => (b[4] ? b[4][k] : -1) - (a[4] ? a[4][k] : -1));
    }}
    return rows;
  }}
  function card(r) {{
    const [i, file, frame, error, scores, decisions, header] = r;
    const name = file.split("/").pop() + (frame !== "" ? "#" + frame : "");
    const img = D.images[String(i)];
    let h = '<div class="card" title="' + esc(file + (frame !== "" ? "#" + frame : "")) + '">';
    h += img ? '<img alt="" loading="lazy" src="data:image/png;base64,' + img + '">'
             : '<div class="noimg">' + (error ? "unreadable" : "no thumbnail<br>(page size cap)") + "</div>";
    h += '<div class="name">' + esc(name) + "</div>";
    if (error) return h + '<div class="err">' + esc(error) + "</div></div>";
    const tags = A.map((a, k) => [a, scores[k], decisions[k] === "1"]).filter((t) => t[2])
      .sort((x, y) => y[1] - x[1]).map((t) => "<span>" + esc(t[0]) + " " + t[1].toFixed(2) + "</span>");
    h += '<div class="tags">' + (tags.length ? tags.join("") : '<span class="none">no tag</span>') + "</div>";
    if (header) h += '<div class="hdr">' + esc(header) + "</div>";
    h += "<details><summary>all " + A.length + " scores</summary><table>";
    for (const [k, a] of A.entries())
      h += '<tr class="' + (decisions[k] === "1" ? "yes" : "") + '"><td>' + esc(a) + '</td><td class="v">' +
           scores[k].toFixed(3) + '</td><td class="v">≥ ' + T[k].toFixed(2) + "</td></tr>";
    return h + "</table></details></div>";
  }}
  function render() {{
    const rows = selected(), per = +$("per").value, pages = Math.max(1, Math.ceil(rows.length / per));
    page = Math.min(page, pages - 1);
    $("grid").innerHTML = rows.slice(page * per, (page + 1) * per).map(card).join("");
    $("count").textContent = rows.length + " of " + D.rows.length + " frames shown" +
      (D.total > D.rows.length ? " (" + D.total + " tagged in all)" : "");
    let p = "";
    if (pages > 1) {{
      p += '<button data-p="' + (page - 1) + '"' + (page === 0 ? " disabled" : "") + ">‹ previous</button>";
      p += " page " + (page + 1) + " of " + pages + " ";
      p += '<button data-p="' + (page + 1) + '"' + (page >= pages - 1 ? " disabled" : "") + ">next ›</button>";
    }}
    $("pager").innerHTML = p;
  }}
  $("pager").addEventListener("click", (e) => {{
    if (e.target.dataset.p !== undefined) {{ page = +e.target.dataset.p; render(); window.scrollTo(0, 0); }}
  }});
  for (const id of ["sort", "attr", "mode", "min", "text", "errors", "per"])
    $(id).addEventListener("input", () => {{ page = 0; render(); }});
  render();
}})();
</script></body></html>
"""
