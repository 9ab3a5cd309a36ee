"""Make the docs' pictures of ``featcache plot`` from a cache (no browser needed).

``map.png`` is plot's own PNG. ``map_html_hover.png`` draws, with matplotlib, what
``map.html`` shows in a browser while the pointer rests on one point: the canvas (the
points at the page's scaled coordinates, same colours and split markers), the legend, and
the tooltip with that point's embedded thumbnail, row, path, class and split.

    python examples/plot_pictures.py cache/mobilenet.h5 --out examples/plot
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from featcache.audit.plot import plot_cache


def page_data(html_path: Path) -> dict:
    text = html_path.read_text()
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert found, "no data block"
    return json.loads(found.group(1))


def hover_picture(data: dict, title: str, path: Path, pick: int) -> None:
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    g, s = np.asarray(data["g"]), np.asarray(data["s"])
    figure = plt.figure(figsize=(10.4, 6.8), dpi=100)
    figure.suptitle(title, x=0.02, ha="left", fontsize=12)
    canvas = figure.add_axes((0.02, 0.03, 0.74, 0.88))
    canvas.set_xticks([])
    canvas.set_yticks([])
    for spine in canvas.spines.values():
        spine.set_color("#cccccc")
    for k, group in enumerate(data["groups"]):
        for split, marker in enumerate("os^"):
            mask = (g == k) & (s == split)
            canvas.scatter(x[mask], y[mask], s=16, c=group["color"], marker=marker, alpha=0.8, lw=0)
    canvas.scatter([x[pick]], [y[pick]], s=140, facecolors="none", edgecolors="black", lw=2)
    canvas.set_xlim(-0.03, 1.03)
    canvas.set_ylim(-0.03, 1.03)
    # the tooltip: thumbnail, then the row's lines, next to the pointer
    url = data["t"][str(pick)]
    thumb = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    left = min(x[pick] + 0.04, 0.62)
    bottom = max(y[pick] - 0.38, 0.02)
    box = canvas.inset_axes((left, bottom, 0.36, 0.34))
    box.set_xticks([])
    box.set_yticks([])
    box.set_facecolor("white")
    image = box.inset_axes((0.04, 0.36, 0.36, 0.6))
    image.imshow(thumb, cmap="gray", interpolation="nearest")
    image.axis("off")
    lines = [
        f"#{data['r'][pick]} {data['p'][pick]}",
        f"class: {data['l'][pick] or '-'}, split: {data['splits'][data['s'][pick]]}",
    ]
    box.text(0.04, 0.22, lines[0], fontsize=9, transform=box.transAxes)
    box.text(0.04, 0.07, lines[1], fontsize=9, transform=box.transAxes)
    # the legend column, as the page's checkboxes
    legend = figure.add_axes((0.78, 0.03, 0.21, 0.88))
    legend.axis("off")
    legend.text(0, 0.98, "[all] [none]", fontsize=9, va="top")
    row = 0.93
    for group in data["groups"]:
        legend.text(0, row, "\u2611", fontsize=11, va="center")
        legend.scatter([0.12], [row], s=50, c=group["color"])
        legend.text(0.18, row, f"{group['name']} ({group['count']})", fontsize=9, va="center")
        row -= 0.045
    row -= 0.03
    for split, symbol in zip(data["splits"], ("\u25cf", "\u25a0", "\u25b2")):
        legend.text(0, row, f"\u2611 {symbol} {split}", fontsize=9, va="center")
        row -= 0.045
    legend.set_xlim(0, 1)
    legend.set_ylim(0, 1)
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--out", default="examples/plot")
    parser.add_argument("--method", default="tsne")
    parser.add_argument("--class-name", default="sandal", help="Hover a point of this class.")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        result = plot_cache(args.cache, folder, method=args.method, seed=0, progress=False)
        shutil.copy(result.files["png"], out / "map.png")
        data = page_data(Path(result.files["html"]))
    wanted = [i for i, name in enumerate(data["l"]) if name == args.class_name]
    pick = next(i for i in wanted or range(len(data["x"])) if str(i) in data["t"])
    name = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[result.method]
    title = f"{Path(args.cache).name}: {name} of {result.points} rows (map.html, hovering a point)"
    hover_picture(data, title, out / "map_html_hover.png", pick)
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
