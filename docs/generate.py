"""Generate the reference pages of ``docs/`` from their sources, so that they cannot drift:

- ``docs/cli.md`` from the click commands (``featcache.cli``): every command's usage, help,
  options by the sections its ``--help`` shows (type or choices, default, help) and examples;
- ``docs/grpc-reference.md`` from ``protos/featcache/v1/extractor.proto``: every RPC, message
  and field with its comment.

Run ``python docs/generate.py`` after changing a command, an option's declaration, a help
layout (``commands/_help.py``) or the ``.proto``; ``--check`` only says whether the committed
pages are current. ``tests/test_docs.py`` fails while they are not. Imports neither
TensorFlow nor gRPC.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO = ROOT / "protos" / "featcache" / "v1" / "extractor.proto"
CLI_PAGE = HERE / "cli.md"
GRPC_PAGE = HERE / "grpc-reference.md"
SHORTCUTS = ("extract", "train-head", "fine-tune")
"""Commands also installed as console scripts of their own (pyproject's [project.scripts])."""
_DEFAULT_IN_HELP = re.compile(r"\s*\[default: (.*)\]\s*$", re.S)


def _cli() -> Any:
    """``featcache.cli``, from the installed package or, failing that, this checkout."""
    try:
        from featcache import cli
    except ImportError:
        if ROOT.name != "featcache":
            raise
        sys.path.insert(0, str(ROOT.parent))
        from featcache import cli
    return cli


# -- docs/cli.md ----------------------------------------------------------------------------


def _escape(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities (else ``<backbone>`` is an HTML tag)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    return _escape(" ".join(text.split()).replace("|", "\\|"))


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _kind(param: Any) -> str:
    """What the option takes: ``flag``, one of its choices, its metavar or its type."""
    import click

    if getattr(param, "is_flag", False) and not param.secondary_opts:
        return "flag"
    if param.secondary_opts:
        return "flag: " + " / ".join(_code(o) for o in (*param.opts, *param.secondary_opts))
    if isinstance(param.type, click.Choice):
        kind = "one of " + ", ".join(_code(str(c)) for c in param.type.choices)
    elif param.metavar:
        kind = _code(param.metavar)
    else:
        kind = param.type.name
    return kind + (", repeatable" if param.multiple else "")


def _default(param: Any, help_text: str) -> tuple[str, str]:
    """(the default as the table shows it, the help without a ``[default: ...]`` it holds)."""
    found = _DEFAULT_IN_HELP.search(help_text)
    if found:
        return found.group(1), help_text[: found.start()]
    if param.required:
        return "required", help_text
    value = param.default
    if param.secondary_opts and isinstance(value, bool):
        return _code(param.opts[0] if value else param.secondary_opts[0]), help_text
    if value is None or value is False or value == () or value == "" or param.is_flag:
        return "", help_text
    if isinstance(value, tuple | list):
        value = ",".join(str(v) for v in value)
    return _code(str(value)), help_text


def _flags(param: Any) -> str:
    long = [o for o in param.opts if o.startswith("--")]
    short = [o for o in param.opts if not o.startswith("--")]
    return ", ".join(_code(o) for o in (*short, *long))


def _command_markdown(name: str, command: Any, group: Any) -> list[str]:
    import click

    from featcache.commands._help import examples_of, sections_of

    # the contexts the CLI makes (their settings: -h as well as --help), so that the page is
    # the same whichever way click first built a command's help option
    parent = click.Context(group, info_name="featcache", **group.context_settings)
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    usage = " ".join(["featcache", name, *command.collect_usage_pieces(ctx)])
    lines = [f"## {name}", "", f"`{usage}`"]
    if name in SHORTCUTS:
        lines[-1] += f" (also installed as `{name}`)"
    lines += ["", _escape(inspect.cleandoc(command.help or "")), ""]
    for title, params in sections_of(command, ctx):
        lines += [f"### {name}: {title}", "", "| option | takes | default | help |"]
        lines += ["| --- | --- | --- | --- |"]
        for param in params:
            default, help_text = _default(param, param.help or "")
            row = (_flags(param), _kind(param), default, help_text)
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    examples = examples_of(name)
    if examples:
        lines += [f"### {name}: examples", "", "```sh"]
        for what, line in examples:
            lines += [f"# {what}", line]
        lines += ["```", ""]
    return lines


def cli_markdown() -> str:
    """The text of ``docs/cli.md``."""
    import click

    from featcache.commands._help import stages_of, summary_of

    group = _cli().main
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by `python docs/generate.py` from the click commands; do not edit. -->",
        "",
        "Every command of `featcache`, its usage, and every option with what it takes, its",
        "default and its help, in the sections `featcache COMMAND --help` shows. What the",
        "commands do, and why: [commands.md](commands.md).",
        "",
    ]
    with click.Context(group, info_name="featcache") as ctx:
        stages = list(stages_of({n: group.get_command(ctx, n) for n in group.list_commands(ctx)}))
    for title, names in stages:
        lines += [f"**{title}**", ""]
        lines += [f"- [{n}](#{n}): {summary_of(group.commands[n])}" for n in names]
        lines.append("")
    lines += [
        "Every command also takes `-h, --help`; `featcache --version` prints the version.",
        "",
    ]
    for _, names in stages:
        for name in names:
            lines += _command_markdown(name, group.commands[name], group)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- docs/grpc-reference.md -----------------------------------------------------------------

_RPC = re.compile(
    r"rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)"
)
_FIELD = re.compile(r"(repeated\s+|optional\s+)?([\w.<>, ]+?)\s+(\w+)\s*=\s*(\d+)\s*;")


def _proto_items(text: str) -> list[tuple[str, str, str]]:
    """(kind, line, comment) of every declaration, with the comments above it or after it."""
    items: list[tuple[str, str, str]] = []
    above: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("//"):
            above.append(line[2:].strip())
            continue
        code, _, after = line.partition("//")
        code = code.strip()
        if not code:
            above = []
            continue
        comment = " ".join([*above, after.strip()]).strip()
        above = []
        if code.startswith(("syntax", "package")):
            continue
        for kind in ("service", "message", "oneof", "rpc", "}"):
            if code.startswith(kind):
                break
        else:
            kind = "field"
        items.append((kind, code, comment))
    return items


def _type_link(name: str, messages: set[str]) -> str:
    return f"[`{name}`](#{name.lower()})" if name in messages else f"`{name}`"


def grpc_markdown(text: str) -> str:
    """The text of ``docs/grpc-reference.md`` from the ``.proto``'s text."""
    items = _proto_items(text)
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
    messages = {line.split()[1] for kind, line, _ in items if kind == "message"}
    service_lines: list[str] = []
    message_lines: list[str] = []
    oneof = ""
    for kind, line, comment in items:
        if kind == "service":
            name = line.split()[1]
            service_lines += [f"## Service `{package.group(1) if package else ''}.{name}`", ""]
            service_lines += ["| RPC | request | response | what it does |"]
            service_lines += ["| --- | --- | --- | --- |"]
        elif kind == "rpc":
            found = _RPC.search(line)
            if found:
                rpc, s_in, req, s_out, resp = found.groups()
                request = ("stream " if s_in else "") + _type_link(req, messages)
                response = ("stream " if s_out else "") + _type_link(resp, messages)
                row = (f"`{rpc}`", request, response, comment)
                service_lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        elif kind == "message":
            name = line.split()[1]
            message_lines += ["", f"### {name}", ""]
            if comment:
                message_lines += [comment, ""]
            if line.rstrip().endswith("{}"):
                message_lines.append("No fields.")
                continue
            message_lines += ["| field | number | type | meaning |", "| --- | --- | --- | --- |"]
        elif kind == "oneof":
            oneof = line.split()[1]
        elif kind == "}":
            oneof = ""
        elif kind == "field":
            found = _FIELD.search(line)
            if not found:
                continue
            label, type_name, field, number = found.groups()
            shown = _type_link(type_name.strip(), messages)
            if label:
                shown = f"{label.strip()} {shown}"
            if oneof:
                shown += f" (one of `{oneof}`)"
            row = (f"`{field}`", number, shown, comment)
            message_lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    relative = PROTO.relative_to(ROOT).as_posix()
    head = [
        "# gRPC reference",
        "",
        "<!-- Generated by `python docs/generate.py` from the .proto's comments; do not edit. -->",
        "",
        f"Every RPC, message and field of [`{relative}`](../{relative}), with its comment. How",
        "the service behaves (limits, status codes, security): [grpc.md](grpc.md).",
        "",
    ]
    lines = [*head, *service_lines, "", "## Messages", *message_lines]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- writing and checking -------------------------------------------------------------------


def pages() -> dict[Path, str]:
    """Each generated page and the text it should hold."""
    return {CLI_PAGE: cli_markdown(), GRPC_PAGE: grpc_markdown(PROTO.read_text())}


def stale() -> list[Path]:
    """The generated pages whose committed text differs from what they should hold."""
    return [p for p, text in pages().items() if not p.is_file() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report stale pages.")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/generate.py")
        return 1 if old else 0
    for path, text in pages().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
