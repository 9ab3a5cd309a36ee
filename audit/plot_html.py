"""``map.html``: the map as one self-contained page (no external files, no CDN).

The points are drawn on a canvas by a small inline script; hovering a point shows its row,
path, class, split and, for up to ``thumbnails`` points (a seeded random choice), its image
as a base64 JPEG read from the cached path (through :func:`.output.thumbnail_loader`;
"missing" when the file cannot be read). The legend's checkboxes hide and show groups.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.progress import progress_bar
from ..core.splits import SPLIT_NAMES
from ..store import CacheReader
from .map_points import MapPoints, palette
from .plot_options import PlotOptions

THUMBNAIL_SIDE = 64
"""Longest side of an embedded thumbnail, in pixels."""
DRAWING_AREA = (800 - 2 * 14, 640 - 2 * 14)
"""Width and height of the canvas' drawing area: the script's W - 2P and H - 2P."""


def thumbnails(
    points: MapPoints,
    reader: CacheReader,
    count: int,
    seed: int,
    progress: bool | None = False,
) -> tuple[dict[int, str | None], int]:
    """(point index -> data URL, or None for an unreadable file; missing count) for
    ``count`` points chosen at random (all points when there are fewer)."""
    from .output import thumbnail_loader

    n = len(points.rows)
    if count >= n:
        chosen = np.arange(n)
    else:  # another stream than the sample's, so that both stay seeded and independent
        chosen = np.sort(np.random.default_rng([seed, 1]).choice(n, count, replace=False))
    source = reader if isinstance(reader, CacheReader) else reader.readers[0]
    load = thumbnail_loader(source, THUMBNAIL_SIDE, "JPEG")
    found: dict[int, str | None] = {}
    bar = progress_bar(len(chosen), progress, "plot: thumbnails")
    try:
        for i in chosen.tolist():
            found[i] = load(reader.paths[int(points.rows[i])])
            bar.update(1)
    finally:
        bar.close()
    return found, sum(1 for v in found.values() if v is None)


def page_data(
    points: MapPoints, reader: CacheReader, thumbs: dict[int, str | None]
) -> dict[str, Any]:
    """What the page's script reads: coordinates in [0, 1] of the canvas' drawing area
    (one scale for both axes, centred: distances on the page are those of the map),
    groups, rows, paths."""
    coords = points.coords
    low, high = coords.min(axis=0), coords.max(axis=0)
    area = np.asarray(DRAWING_AREA, np.float64)
    per_pixel = float(np.max((high - low) / area))  # map units per pixel, both axes
    per_pixel = per_pixel if per_pixel > 0 else 1.0
    scaled = 0.5 + (coords - (low + high) / 2) / (per_pixel * area)
    counts = np.bincount(points.group, minlength=len(points.groups))
    return {
        "x": np.round(scaled[:, 0], 4).tolist(),
        "y": np.round(scaled[:, 1], 4).tolist(),
        "g": points.group.tolist(),
        "s": points.split.tolist(),
        "r": points.rows.tolist(),
        "p": [reader.paths[r] for r in points.rows.tolist()],
        "l": reader.label_names(points.rows),
        "t": {str(i): v for i, v in thumbs.items() if v is not None},
        "m": sorted(i for i, v in thumbs.items() if v is None),
        "groups": [
            {"name": name, "color": colour, "count": int(counts[g])}
            for g, (name, colour) in enumerate(zip(points.groups, palette(points.groups)))
        ],
        "splits": list(SPLIT_NAMES),
    }


def write_html(
    points: MapPoints,
    reader: CacheReader,
    path: Path,
    title: str,
    options: PlotOptions,
) -> tuple[Path, int, int]:
    """Write ``map.html``; returns (path, thumbnails embedded, thumbnails missing)."""
    thumbs, missing = thumbnails(points, reader, options.thumbnails, options.seed, options.progress)
    data = page_data(points, reader, thumbs)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in points.notes)
    path.write_text(render(title, data, notes, options.color))
    return path, len(thumbs) - missing, missing


def render(title: str, data: dict[str, Any], notes: str, color: str) -> str:
    """The page: a canvas, a legend and a tooltip; ``data`` as inline JSON."""
    # every "<" escaped: no path or class name can end the script element or open a comment
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<ul class="note">{notes}</ul>
<p class="note">Colour: {html.escape(color)}; marker: split (&#9679; train, &#9632; val,
&#9650; test). Hover a point for its image; the checkboxes hide groups.</p>
<div id="wrap"><canvas id="map"></canvas><div id="legend">
<button id="all">all</button> <button id="none">none</button><div id="groups"></div>
<hr><div id="splitbox"></div></div></div>
<div id="tip"></div>
<script type="application/json" id="data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


_STYLE = """
body{font-family:sans-serif;margin:1em;color:#222} h1{font-size:18px}
#wrap{display:flex;gap:1em;align-items:flex-start}
#map{border:1px solid #ccc;width:800px;height:640px;cursor:crosshair}
#legend{font-size:13px;max-height:640px;overflow-y:auto;min-width:180px}
#legend label{display:block;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin:0 4px}
#tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:4px;
  font-size:12px;max-width:320px;word-break:break-all;pointer-events:none;
  box-shadow:2px 2px 6px rgba(0,0,0,.2)}
#tip img{display:block;image-rendering:pixelated;width:96px;margin-bottom:3px}
.missing{color:#900} .note{color:#666}
"""

_SCRIPT = """
const D = JSON.parse(document.getElementById("data").textContent);
const cv = document.getElementById("map"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip");
const W = 800, H = 640, P = 14, R = 3.5, dpr = window.devicePixelRatio || 1;
cv.width = W * dpr; cv.height = H * dpr; ctx.scale(dpr, dpr);
const hideG = new Set(), hideS = new Set(), missing = new Set(D.m);
let hot = -1;
const X = i => P + D.x[i] * (W - 2 * P), Y = i => P + (1 - D.y[i]) * (H - 2 * P);
const shown = i => !hideG.has(D.g[i]) && !hideS.has(D.s[i]);
function mark(i, r) {  // train: circle, val: square, test: triangle
  const x = X(i), y = Y(i);
  ctx.beginPath();
  if (D.s[i] === 1) ctx.rect(x - r, y - r, 2 * r, 2 * r);
  else if (D.s[i] === 2) {
    ctx.moveTo(x, y - 1.2 * r); ctx.lineTo(x + 1.1 * r, y + 0.8 * r);
    ctx.lineTo(x - 1.1 * r, y + 0.8 * r); ctx.closePath();
  } else ctx.arc(x, y, r, 0, 2 * Math.PI);
}
function draw() {
  ctx.clearRect(0, 0, W, H);
  ctx.globalAlpha = 0.8;
  for (let i = 0; i < D.x.length; i++) {
    if (!shown(i)) continue;
    ctx.fillStyle = D.groups[D.g[i]].color; mark(i, R); ctx.fill();
  }
  ctx.globalAlpha = 1;
  if (hot >= 0) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2; mark(hot, R + 3); ctx.stroke(); }
}
function line(text, cls) {
  const d = document.createElement("div");
  d.textContent = text;  // text, never HTML: paths and class names are data
  if (cls) d.className = cls;
  return d;
}
cv.addEventListener("mousemove", e => {
  const b = cv.getBoundingClientRect();
  const mx = (e.clientX - b.left) * W / b.width, my = (e.clientY - b.top) * H / b.height;
  let best = -1, bd = 64;
  for (let i = 0; i < D.x.length; i++) {
    if (!shown(i)) continue;
    const dx = X(i) - mx, dy = Y(i) - my, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = i; }
  }
  if (best !== hot) { hot = best; draw(); }
  if (best < 0) { tip.style.display = "none"; return; }
  tip.replaceChildren();
  const url = D.t[String(best)];
  if (url) {
    const im = document.createElement("img"); im.src = url; tip.appendChild(im);
  } else if (missing.has(best)) {
    tip.appendChild(line("image missing (the file cannot be read)", "missing"));
  } else tip.appendChild(line("no thumbnail embedded (--thumbnails)", "note"));
  tip.appendChild(line("#" + D.r[best] + " " + D.p[best]));
  tip.appendChild(line("class: " + (D.l[best] || "-") + ", split: " + D.splits[D.s[best]]));
  tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 14) + "px";
  tip.style.display = "block";
});
cv.addEventListener("mouseleave", () => { tip.style.display = "none"; hot = -1; draw(); });
function box(parent, set, k, label, colour, symbol) {
  const l = document.createElement("label"), c = document.createElement("input");
  c.type = "checkbox"; c.checked = true;
  c.addEventListener("change", () => { c.checked ? set.delete(k) : set.add(k); draw(); });
  const s = document.createElement("span");
  s.className = "sw";
  if (colour) s.style.background = colour;
  else { s.textContent = symbol; s.style.width = "auto"; }
  l.append(c, s, document.createTextNode(label));
  parent.appendChild(l);
  return c;
}
const checks = [], gbox = document.getElementById("groups");
D.groups.forEach((g, k) => {
  if (g.count) checks.push([k, box(gbox, hideG, k, g.name + " (" + g.count + ")", g.color)]);
});
const sbox = document.getElementById("splitbox");
["\u25cf", "\u25a0", "\u25b2"].forEach((sym, k) => {
  if (D.s.includes(k)) box(sbox, hideS, k, " " + D.splits[k], null, sym);
});
document.getElementById("all").onclick = () => {
  hideG.clear(); checks.forEach(([k, c]) => { c.checked = true; }); draw();
};
document.getElementById("none").onclick = () => {
  checks.forEach(([k, c]) => { hideG.add(k); c.checked = false; }); draw();
};
draw();
"""
