"""Pass lookup by name: the built-in table (`graphopt.passes.PASSES`) plus passes users register.

This sits above the pass layer (it imports the pass library); pass modules never import it.
"""

from __future__ import annotations

from graphopt.errors import InputError
from graphopt.pass_api import Pass
from graphopt.passes import PASSES

_USER_PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a user's pass available by name to the CLI, recipes and `optimize`."""
    known = PASSES.get(cls.name) or _USER_PASSES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"pass name '{cls.name}' registered twice")
    _USER_PASSES[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """Every pass by name, sorted: built-in and registered."""
    return dict(sorted({**PASSES, **_USER_PASSES}.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registered_passes()
    if name not in passes:
        raise InputError(f"unknown pass '{name}' (known: {', '.join(passes)})")
    return passes[name]
