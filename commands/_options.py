"""Click flags derived from the option dataclasses' declarations (featcache.core.schema).

``flags(ExtractOptions)`` is a decorator adding one ``click.option`` per declared option:
its flag (``--`` + the name with dashes unless declared), one-letter alias, type, choices,
default and help come from the field and its :class:`~featcache.core.schema.Option`. The
command receives each value under the option's name, ready for the dataclass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import Field
from typing import Any

import click

from ..core.schema import Option, default_of, options_of

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def flags(
    cls: Any,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    **changes: dict[str, Any],
) -> Decorator:
    """Add the flags of ``cls``'s CLI options (``only`` some, or all but ``skip``), in
    declaration order; ``changes[name]`` overrides keyword arguments of one ``click.option``
    (a command's own default, a custom type)."""
    chosen = list(only) if only is not None else None
    picked = [
        (each, spec)
        for each, spec in options_of(cls)
        if spec.cli and each.name not in skip and (chosen is None or each.name in chosen)
    ]
    if chosen is not None:
        missing = set(chosen) - {each.name for each, _ in picked}
        if missing:
            raise TypeError(f"{cls.__name__} declares no CLI option {sorted(missing)}")
        picked.sort(key=lambda pair: chosen.index(pair[0].name))
    made = [click_option(each, spec, **changes.get(each.name, {})) for each, spec in picked]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for make in reversed(made):  # click lists options in decoration order, bottom up
            command = make(command)
        return command

    return decorate


def declared_flags() -> dict[str, str]:
    """Option name -> CLI flag, for the options whose flag is not ``--`` + the name with
    dashes, over every option set the commands offer."""
    from ..audit.options import AuditOptions
    from ..audit.plot_options import PlotOptions
    from ..core.options import ExtractOptions, RayOptions
    from ..heads.options import OPTION_SETS
    from ..service.options import ServeOptions

    sets = (ExtractOptions, RayOptions, *OPTION_SETS, AuditOptions, PlotOptions, ServeOptions)
    return {
        each.name: spec.flag
        for cls in sets
        for each, spec in options_of(cls)
        if spec.flag and spec.cli
    }


def flag_of(name: str, spec: Option) -> str:
    """The CLI flag of an option: its declared one, else ``--`` + the name with dashes."""
    return spec.flag or "--" + name.replace("_", "-")


def click_option(each: Field[Any], spec: Option, **changes: Any) -> Decorator:
    """One ``click.option`` for a declared option."""
    default = default_of(each)
    flag = flag_of(each.name, spec)
    names = [f"{flag}/--no-{flag[2:]}" if spec.negatable else flag]
    if spec.short:
        names.append(spec.short)
    kind = spec.kind or _kind(each, default)
    settings: dict[str, Any] = {"default": default, "help": spec.help or None}
    if kind is bool and not spec.negatable:
        settings["is_flag"] = True
    elif kind is not bool:
        if spec.choices is not None and not spec.metavar:  # else the library checks them
            settings["type"] = click.Choice(spec.choices)
        elif spec.path:
            settings["type"] = click.Path()
        elif kind in (int, float):
            settings["type"] = kind
        if isinstance(default, tuple):  # given on the command line as a comma list
            settings["default"] = ",".join(str(v) for v in default)
    if spec.metavar:
        settings["metavar"] = spec.metavar
    settings.update(changes)
    if spec.default_text is not None:
        settings["help"] = f"{spec.help} [default: {spec.default_text}]".strip()
    elif settings["default"] not in (None, "", ()) and not settings.get("is_flag"):
        settings.setdefault("show_default", True)
    return click.option(*names, each.name, **settings)


def _kind(each: Field[Any], default: Any) -> type:
    """``bool``, ``int``, ``float`` or ``str``: from the default, else the annotation."""
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    hints = str(each.type)
    for kind in (bool, int, float):
        if kind.__name__ in hints.replace("|", " ").split():
            return kind
    return str


__all__ = ["click_option", "declared_flags", "flag_of", "flags"]
