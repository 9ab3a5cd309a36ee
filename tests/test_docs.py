"""The documentation: generated pages current, every relative link leading somewhere."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "grpc-reference.md"])
def test_generated_pages_are_current(page):
    generated = {path.name: text for path, text in _generator().pages().items()}
    committed = (DOCS / page).read_text() if (DOCS / page).is_file() else ""
    assert committed == generated[page], (
        f"docs/{page} differs from what its sources give: run `python docs/generate.py` "
        "and commit the result"
    )


def test_cli_page_has_every_command_and_option():
    from featcache.cli import main

    text = (DOCS / "cli.md").read_text()
    for name, command in main.commands.items():
        assert f"\n## {name}\n" in text
        section = text.split(f"\n## {name}\n")[1].split("\n## ")[0]
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert f"`{flag}`" in section, f"{name} {flag}"


def test_generator_imports_neither_tensorflow_nor_grpc():
    code = (
        "import sys, runpy\n"
        f"module = runpy.run_path({str(DOCS / 'generate.py')!r})\n"
        "module['pages']()\n"
        "heavy = ('tensorflow', 'keras', 'grpc')\n"
        "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


# -- links ------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces as ``-``."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"&\w+;", "", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code(page.read_text()), re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", _without_code(page.read_text()))
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_first_screen_is_a_quickstart():
    lines = (ROOT / "README.md").read_text().splitlines()
    first = "\n".join(lines[:45])
    for step in (
        "pip install .",
        "featcache extract data/",
        "featcache train-head",
        "featcache predict",
    ):
        assert step in first
    assert "bash examples/run.sh" in "\n".join(lines[:60]) and "bash .ci/run" in "\n".join(
        lines[:60]
    )
    assert len(lines) < 150
