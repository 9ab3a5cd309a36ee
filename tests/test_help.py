"""Grouped help: ``featcache --help`` by stage of the workflow, each command's options by
section (basics first), then examples (``commands/_help.py``)."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from featcache.cli import extract_command, main
from featcache.commands._help import (
    LAYOUTS,
    OTHER_SECTION,
    OTHER_STAGE,
    STAGES,
    WorkflowGroup,
    flag_name,
    sections_of,
)


def _help(command: click.Command, *args: str) -> str:
    result = CliRunner().invoke(command, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def _headings(text: str) -> list[str]:
    """The section titles of a help text, in order (``Usage:`` excluded)."""
    return [m.group(1) for m in re.finditer(r"^(\S[^\n]*):$", text, re.M)]


def test_group_lists_every_command_once_by_stage_in_workflow_order():
    text = _help(main)
    listed = re.findall(r"^  (\S+)\s{2,}\S", text.split("Examples:")[0], re.M)
    listed = [name for name in listed if not name.startswith("-")]  # the group's options
    assert sorted(listed) == sorted(main.commands), "each registered command once"
    stages = [title for title, names in STAGES if any(n in main.commands for n in names)]
    assert [h for h in _headings(text) if h in stages] == stages
    workflow = [n for _, names in STAGES for n in names if n in main.commands]
    assert listed[: len(workflow)] == workflow
    assert "..." not in text.split("\n", 1)[1].split("Examples:")[0], "summaries are whole"
    assert listed[0] == "extract" and "featcache extract data/" in text


@pytest.mark.parametrize("name", sorted(main.commands))
def test_command_help_has_sections_basics_first_and_examples(name):
    command = main.commands[name]
    layout = LAYOUTS.get(name)
    assert layout is not None, f"{name} has no help layout: add one to commands/_help.py LAYOUTS"
    with click.Context(command, info_name=name, **command.context_settings) as ctx:
        sections = sections_of(command, ctx)
    loose = [flag_name(p) for title, params in sections if title == OTHER_SECTION for p in params]
    assert not loose, f"{name}: {loose} in no section: add them to LAYOUTS[{name!r}]"

    text = _help(main, name)
    shown = [h for h in _headings(text) if h != "Examples"]
    assert shown == [title for title, _ in sections]
    assert "Options" not in shown
    if len(sections) > 1:
        assert shown[0] == "Basics"
    body = text[text.index(f"\n{shown[0]}:\n") :]  # after the description
    for _, params in sections:  # every option shown once
        for param in params:
            row = rf"^  (-\w, )?{re.escape(flag_name(param))}(?=[ /]|$)"
            assert len(re.findall(row, body, re.M)) == 1, flag_name(param)
    assert _headings(text)[-1] == "Examples"
    examples = text.split("\nExamples:\n")[1]
    assert 2 <= len(layout.examples) <= 3
    for what, line in layout.examples:
        assert line.startswith(f"featcache {name} ") or line == f"featcache {name}"
        assert f"    {line}\n" in examples and f"  {what[:30]}" in examples


def test_shortcut_entry_points_show_the_same_sections():
    alone, under_main = _help(extract_command), _help(main, "extract")
    assert alone.split("\n", 1)[1] == under_main.split("\n", 1)[1]
    assert "\nBasics:\n" in alone


def test_absent_and_unplaced_names_never_fail():
    group = WorkflowGroup("featcache")
    plain = click.Command("zzz-new", help="A command no stage names.")
    export = click.Command(  # a layout's command with a flag its layout does not name
        "export",
        params=[click.Option(["--format"]), click.Option(["--brand-new"], help="New.")],
        help="Export.",
    )
    group.add_command(plain)
    group.add_command(export)
    text = _help(group)
    assert _headings(text) == ["Options", "Use", OTHER_STAGE, "Examples"]  # no "weights"
    assert "zzz-new" in text.split(f"{OTHER_STAGE}:")[1]
    export_help = _help(group, "export")
    assert _headings(export_help) == ["Basics", OTHER_SECTION, "Output", "Examples"]
    assert "--brand-new" in export_help.split(f"{OTHER_SECTION}:")[1]
