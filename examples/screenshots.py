"""Browser screenshots of the HTML pages for docs/commands.md: the audit report and the plot's
map.html with the pointer resting on a sandal of the val split.

Needs a headless Chromium (``apt-get install chromium``) and the cache ``examples/run.sh``
makes. Usage::

    python examples/screenshots.py cache/mobilenet.h5
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOVER = """<script>
window.addEventListener("load", () => {  // rest the pointer on the first val sandal
  let i = 0;
  for (let j = 0; j < D.x.length; j++) if (D.l[j] === "sandal" && D.s[j] === 1) { i = j; break; }
  const b = cv.getBoundingClientRect();
  cv.dispatchEvent(new MouseEvent("mousemove",
    {clientX: b.left + X(i) * b.width / W, clientY: b.top + Y(i) * b.height / H}));
});
</script>"""


def shoot(browser: str, page: Path, out: Path, width: int, height: int) -> None:
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},{height}", "--virtual-time-budget=3000",
         f"--screenshot={out}", page.as_uri()],
        check=True, capture_output=True,
    )  # fmt: skip
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    from featcache import audit_cache, plot_cache, write_audit_report

    with tempfile.TemporaryDirectory() as tmp:
        report = audit_cache(args.cache)
        write_audit_report(report, Path(tmp) / "audit")
        shoot(args.browser, Path(tmp) / "audit" / "report.html",
              HERE / "audit" / "report.png", 1200, 1400)  # fmt: skip
        plot_cache(args.cache, Path(tmp) / "plot", method="tsne", seed=0, progress=False)
        page = (Path(tmp) / "plot" / "map.html").read_text()
        hover = Path(tmp) / "plot" / "hover.html"
        hover.write_text(page.replace("</body>", HOVER + "</body>"))
        shoot(args.browser, hover, HERE / "plot" / "map_html_hover.png", 1250, 760)


if __name__ == "__main__":
    main()
