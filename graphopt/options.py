"""Typed pass options: parse `key=value` strings into a pass's `Options` dataclass.

Values are converted to the field's declared type (int, float, bool, str, Literal[...],
tuple[str, ...] written as `a|b|c`, or Optional of those) and then the dataclass's own
`validate()` runs, so a malformed option fails at parse time with the pass's name in it.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np

from graphopt.errors import InputError


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For passes that take no options."""

    def validate(self) -> None:
        """Raise ValueError naming the bad option; no-op here."""


def parse_options(pass_name: str, cls: type, raw: dict[str, str]) -> Any:
    """Build `cls(**converted raw)`; unknown keys and bad values raise `InputError`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, text in raw.items():
        if key not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise InputError(f"pass '{pass_name}': unknown option '{key}' (options: {choices})")
        try:
            values[key] = convert(text, hints[key])
        except ValueError as exc:
            raise InputError(f"pass '{pass_name}': option {key}={text!r}: {exc}") from None
    return build_options(pass_name, cls, values)


def build_options(pass_name: str, cls: type, values: dict[str, Any]) -> Any:
    """Instantiate and validate options given as Python values (each checked against its
    annotation first: a Literal's choices, bool / int / float / str, tuples of them; a list
    where a tuple is expected is taken as one)."""
    try:
        hints = typing.get_type_hints(cls)
        values = {k: check_value(k, v, hints[k]) if k in hints else v for k, v in values.items()}
        options = cls(**values)
        options.validate()
    except (TypeError, ValueError) as exc:
        raise InputError(f"pass '{pass_name}': {exc}") from None
    return options


_UNIONS = (Union, types.UnionType)  # Optional[X] and X | None
_SCALARS = {bool: (bool, np.bool_), int: (numbers.Integral,), float: (numbers.Real,), str: (str,)}


def check_value(name: str, value: Any, hint: Any) -> Any:
    """`value` if it is what `hint` allows (a list for a tuple comes back a tuple), else
    ValueError naming the option. Annotations other than these are left to `validate`."""
    origin = get_origin(hint)
    if origin in _UNIONS:
        if value is None:
            return None
        args = [a for a in get_args(hint) if a is not type(None)]
        return check_value(name, value, args[0]) if len(args) == 1 else value
    if origin is Literal:
        if value not in get_args(hint):
            raise ValueError(f"{name} must be one of {', '.join(map(str, get_args(hint)))}, got {value!r}")
        return value
    if origin is tuple and isinstance(value, (tuple, list)):
        item = get_args(hint)[0] if get_args(hint) else Any
        return tuple(check_value(name, v, item) for v in value)
    if origin is tuple or hint in _SCALARS:
        allowed = (tuple, list) if origin is tuple else _SCALARS[hint]
        wrong_bool = isinstance(value, (bool, np.bool_)) and hint in (int, float)
        if wrong_bool or not isinstance(value, allowed):
            what = "a list" if origin is tuple else f"{'an' if hint is int else 'a'} {hint.__name__}"
            raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return value


def convert(text: str, hint: Any) -> Any:
    """Convert one option string to the annotated type."""
    origin = get_origin(hint)
    if origin in _UNIONS:
        args = [a for a in get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return convert(text, args[0])
    if origin is Literal:
        allowed = get_args(hint)
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}")
        return text
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        return tuple(convert(part, item) for part in text.split("|") if part)
    if hint is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected a boolean (true/false)")
        return lowered in ("true", "1", "yes")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    return text


def describe_options(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each option, for `graphopt passes`."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows


def option_notes(cls: type) -> dict[str, str]:
    """Each option's explanation as its Options class states it: the comment after the field
    (`speed_runs: int = 30  # timed runs per candidate`), for `graphopt passes NAME`."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*=[^#]*#\s*(.+)$", line)
        if match:
            notes[match.group(1)] = match.group(2).strip()
    return notes


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "|".join(map(str, get_args(hint)))
    if origin in _UNIONS:
        return " or ".join(_type_name(a) for a in get_args(hint) if a is not type(None)) + " or none"
    if origin is tuple:
        return f"list of {_type_name(get_args(hint)[0])} (a|b)"
    return getattr(hint, "__name__", str(hint))
