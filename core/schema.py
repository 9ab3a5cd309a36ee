"""One declaration per option.

An option set is a dataclass; each option is a field made by :func:`option`, whose metadata
(:class:`Option`) holds what every adapter needs: help text, choices, numeric range, parser,
flag spelling. From that one declaration come

- the library's check and its error message (:func:`check_fields`, run by the dataclass),
- the click flag and its help (``featcache.commands._options``),
- the gRPC request conversion (``featcache.service.convert``: fields named as the option),
- the Python client's keywords (``featcache.service.client``: checked by the dataclass).

Adding an option means declaring it here-style on its dataclass, using it, and testing it.
Nothing in this module imports click, gRPC or TensorFlow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from ..errors import InvalidOptionError

SCHEMA = "featcache"
"""Key of a field's :class:`Option` in ``dataclasses.field(metadata=...)``."""


@dataclass(frozen=True)
class Range:
    """Accepted values of a numeric option (None always passes: not set)."""

    low: float
    high: float = math.inf
    wording: str = ""
    """The error's words (``must be at least 1``); derived from the bounds when empty."""
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    """Refuse what is not an ``int`` (``expected an integer 1 to 64``)."""

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)  # NaN fails both

    @property
    def words(self) -> str:
        if self.wording:
            return self.wording
        if self.high < math.inf:
            return f"expected {self.low:g} to {self.high:g}"
        return f"must be at least {self.low:g}"

    def check(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            expected = f"an integer {self.low:g} to {self.high:g}" if self.integer else "a number"
            raise invalid(name, value, f"expected {expected}")
        if self.integer and not isinstance(value, numbers.Integral):
            raise invalid(name, value, f"expected an integer {self.low:g} to {self.high:g}")
        if not self.holds(float(value)):
            raise invalid(name, value, self.words)


@dataclass(frozen=True)
class Option:
    """Everything known of one option besides its name, type and default (the field's)."""

    help: str = ""
    choices: tuple[str, ...] | None = None
    range: Range | None = None
    parse: Callable[[Any, str], Any] | None = None
    """Checks (and may normalise) a value: ``parse(value, name)``; raises
    :class:`InvalidOptionError`. With ``normalise``, its result replaces the value."""
    normalise: bool = False
    flag: str | None = None
    """The CLI flag when not ``--`` + the name with dashes."""
    short: str | None = None
    """A one-letter alias (``-b``)."""
    cli: bool = True
    """Offered as a flag by the commands that take this option set."""
    negatable: bool = False
    """A boolean shown as ``--x/--no-x`` (else a plain ``--x`` switch)."""
    metavar: str | None = None
    default_text: str | None = None
    """What help says the default is, when not the default itself (``cache/<backbone>.h5``)."""
    path: bool = False
    """The value names a file or folder."""
    kind: type | None = None
    """The CLI's value type when the field's annotation allows several (``int`` for
    ``int | None``); by default ``str``/``int``/``float``/``bool`` from the default."""
    wire: str | None = None
    """The field of the gRPC message carrying it, when not named as the option."""


def option(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    **spec: Any,
) -> Any:
    """A dataclass field declaring an option (``spec``: the :class:`Option` fields)."""
    return field(
        default=default,
        default_factory=default_factory,
        init=init,
        metadata={SCHEMA: Option(**spec)},
    )


def spec_of(each: Field[Any]) -> Option | None:
    """The :class:`Option` of a dataclass field; None for a field that is not an option."""
    found = each.metadata.get(SCHEMA)
    return found if isinstance(found, Option) else None


def options_of(cls: Any) -> Iterator[tuple[Field[Any], Option]]:
    """The option fields of a dataclass (class or instance), in declaration order."""
    for each in fields(cls):
        spec = spec_of(each)
        if spec is not None:
            yield each, spec


def default_of(each: Field[Any]) -> Any:
    """A field's default value (None when it has none)."""
    if each.default is not MISSING:
        return each.default
    if each.default_factory is not MISSING:
        return each.default_factory()
    return None


def defaults(cls: Any) -> dict[str, Any]:
    """Option name -> default, for every option of ``cls``."""
    return {each.name: default_of(each) for each, _ in options_of(cls)}


def check_value(name: str, spec: Option, value: Any) -> Any:
    """``value`` checked against ``spec`` (and normalised when its parser says so)."""
    if value is None:
        return None
    if spec.choices is not None:
        check_choice(name, value, spec.choices)
    if spec.range is not None:
        spec.range.check(name, value)
    if spec.parse is not None:
        parsed = spec.parse(value, name)
        if spec.normalise:
            return parsed
    return value


def check_fields(instance: Any, names: Sequence[str] | None = None) -> None:
    """Check every option of a (frozen) dataclass instance, normalising those whose parser
    says so; ``names`` limits the check to some."""
    for each, spec in options_of(instance):
        if names is not None and each.name not in names:
            continue
        value = getattr(instance, each.name)
        checked = check_value(each.name, spec, value)
        if checked is not value:
            object.__setattr__(instance, each.name, checked)


def invalid(parameter: str, value: Any, expected: str) -> InvalidOptionError:
    """``InvalidOptionError("parameter value: expected")`` naming the parameter."""
    shown = repr(value) if isinstance(value, str) else str(value)
    return InvalidOptionError(f"{parameter} {shown}: {expected}", parameter)


def check_choice(parameter: str, value: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise invalid(parameter, value, f"expected one of {', '.join(choices)}")
    return value
