"""Type and range checks of `graphopt.optimize`'s arguments, done before any work.

The CLI range-checks its numbers while parsing; a script calling the API gets the same
contract here: a wrong argument raises `InputError` with one line naming the argument and
what it expects, never an AttributeError or TypeError from deep inside a pass or a library.
Feeds given as an iterable are read once into a list (a generator could not be checked and
then used), so `check_optimize_arguments` returns the feed and shape arguments to use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from graphopt.data import MAX_DIM
from graphopt.errors import InputError
from graphopt.limits import RUNS, SEED, THREADS
CHOICES = {"verify": ("each", "end", "off"), "on_fail": ("rollback", "fail", "warn"), "goal": ("latency", "size")}


def check_optimize_arguments(args: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Check `optimize`'s keyword arguments (by name); returns `(data, calib, shapes)` to use."""
    from graphopt.targets import get_target

    _check_passes(args.get("passes"))
    for name in ("recipe", "output", "save_inputs", "save_outputs"):
        if args.get(name) is not None and not isinstance(args[name], (str, os.PathLike)):
            raise InputError(f"{name}: expected a string or path, got {_show(args[name])}")
    for name, choices in CHOICES.items():
        if name in args and args[name] not in choices:
            raise InputError(f"{name}: expected one of {', '.join(choices)}, got {_show(args[name])}")
    if not isinstance(args.get("target", "portable"), str):
        raise InputError(f"target: expected a target name, got {_show(args['target'])}")
    get_target(args.get("target", "portable"))
    for name, (low, high) in (("bench_runs", RUNS), ("threads", THREADS), ("seed", SEED)):
        if name in args:
            _check_int(name, args[name], low, high)
    if not isinstance(args.get("bench", False), (bool, np.bool_)):
        raise InputError(f"bench: expected True or False, got {_show(args['bench'])}")
    _check_names("providers", args.get("providers"))
    _check_paths("reports", args.get("reports", ()))
    if args.get("progress") is not None and not callable(args["progress"]):
        raise InputError(f"progress: expected a callable taking one message string, got {_show(args['progress'])}")
    _check_budget(args.get("budget"))
    return _feeds_arg("data", args.get("data")), _feeds_arg("calib", args.get("calib")), _shapes_arg(args.get("shapes"))


def _check_passes(passes) -> None:
    from graphopt.pass_api import Pass

    if passes is None or isinstance(passes, str):
        return
    if not isinstance(passes, (list, tuple)):
        raise InputError(f"passes: expected a spec string such as 'cleanup,fuse' or a list of graphopt.Pass "
                         f"instances, got {_show(passes)}")
    for i, item in enumerate(passes):
        if isinstance(item, type) and issubclass(item, Pass):
            raise InputError(f"passes[{i}]: got the class {item.__name__}, expected an instance: {item.__name__}()")
        if not isinstance(item, Pass):
            raise InputError(f"passes[{i}]: expected a graphopt.Pass instance, got {_show(item)}")


def _check_int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected an integer from {low} to {high}, got {_show(value)}")
    if not low <= value <= high:
        raise InputError(f"{name}: must be from {low} to {high}, got {value}")


def _check_names(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{name}: expected a list of names such as ['cpu'], got {_show(value)}")


def _check_paths(name: str, value) -> None:
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, Iterable):
        raise InputError(f"{name}: expected a list of paths, got {_show(value)}")
    for item in value if isinstance(value, (list, tuple)) else ():  # an iterator is read once, later
        if not isinstance(item, (str, os.PathLike)):
            raise InputError(f"{name}: expected a list of paths, got an item {_show(item)}")


def _check_budget(budget) -> None:
    from graphopt.tolerance import Budget

    if budget is None or isinstance(budget, Budget):
        return
    if isinstance(budget, Mapping):
        bad = [k for k, v in budget.items() if not isinstance(k, str) or isinstance(v, bool)
               or not isinstance(v, (int, float, np.number))]
        if bad:
            raise InputError(f"budget: expected {{metric: number}}, got {_show(bad[0])}: {_show(budget[bad[0]])}")
        return
    if isinstance(budget, (list, tuple)) and all(isinstance(item, str) for item in budget):
        return
    raise InputError(f"budget: expected a graphopt.Budget, a dict {{metric: number}} or a list of "
                     f"'METRIC=VALUE' strings, got {_show(budget)}")


def _feeds_arg(name: str, value):
    """A path stays a path; a list or tuple of feeds is checked and kept (the caller's memory);
    any other iterable of feeds, or an ONNX Runtime `CalibrationDataReader`, is read once, checked
    and spilled to a scratch folder feed by feed (graphopt.lazy_feeds), so a generator of many
    feeds is never held in memory at once."""
    from graphopt.lazy_feeds import LazyFeeds, spill, user_feeds

    if value is None or isinstance(value, (str, os.PathLike, LazyFeeds)):
        return value
    expected = f"{name}: expected a path to .npz data or an iterable of feeds (dicts of input name -> numpy array)"
    is_reader = callable(getattr(value, "get_next", None)) and not isinstance(value, Iterable)
    if not is_reader and (isinstance(value, (Mapping, np.ndarray, bytes)) or not isinstance(value, Iterable)):
        hint = "; wrap a single feed in a list" if isinstance(value, Mapping) else ""
        raise InputError(f"{expected}, got {_show(value)}{hint}")

    def check(i: int, feed) -> None:
        if not isinstance(feed, Mapping):
            raise InputError(f"{expected}; feed {i} is {_show(feed)}")
        for key, array in feed.items():
            if not isinstance(key, str) or not isinstance(array, (np.ndarray, np.generic)):
                raise InputError(f"{expected}; feed {i} maps {_show(key)} to {_show(array)}")

    if isinstance(value, (list, tuple)):
        for i, feed in enumerate(value):
            check(i, feed)
        return list(value)
    return spill(user_feeds(name, value, is_reader), check)


def _shapes_arg(shapes):
    """`["NAME=DIMS", ...]` (parsed against the model later) or `{name: dims}` with positive dims."""
    if shapes is None:
        return None
    if isinstance(shapes, (list, tuple)) and all(isinstance(item, str) for item in shapes):
        return list(shapes)
    if not isinstance(shapes, Mapping):
        raise InputError(f"shapes: expected {{input name: dims}} or a list of 'NAME=DIMS' strings, got {_show(shapes)}")
    for name, dims in shapes.items():
        ok = isinstance(name, str) and isinstance(dims, (list, tuple)) and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and 1 <= d <= MAX_DIM
            for d in dims)
        if not ok:
            raise InputError(f"shapes[{name!r}]: expected a tuple of integers from 1 to {MAX_DIM}, got {_show(dims)}")
    return {name: tuple(int(d) for d in dims) for name, dims in shapes.items()}


def _show(value) -> str:
    """A short one-line description of a bad value."""
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {list(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else f"a {type(value).__name__}"
