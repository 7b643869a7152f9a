"""Quantization profiles from the user's own file: `quantize:profile=my_npu.toml` (or .json/.yaml).

The file holds the fields of a built-in profile (profiles.py, `QuantProfile`), so a runtime that
graphopt does not ship a profile for (an NPU SDK, a vendor's ONNX Runtime EP) is described as
data, not code:

    base = "tensorrt"                 # optional: start from a built-in profile
    description = "my NPU: symmetric int8, no residual Add"
    activation = {dtype = "int8", symmetric = true}
    weight = {dtype = "int8", symmetric = true, bits = 8}
    drop_ops = ["Add"]                # with a base: op rules to remove
    wide = {dtype = "uint16"}         # optional: the budget widens a unit's activations to this
    [ops.Conv]                        # with a base: added or replacing the base's rule
    role = "compute"
    activations = [0]
    weight = 1
    [default]                         # optional: the rule of every op `ops` does not list
    role = "elementwise"
    always = true                     # quantized whatever its neighbours (no float island)

Without `base`, `activation`, `weight` and `ops` are required. Every field is checked when the
options are parsed (unknown names, types, roles, dtypes, bits), so a typo stops the run before
any work with one line that names the file and the field. A file profile's latency check is off
unless it sets `latency_check = true` (it then times on `latency_provider`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from graphopt.config_files import CONFIG_SUFFIXES, read_config
from graphopt.errors import InputError
from graphopt.passes.quantize.profiles import PROFILES, OpRule, QuantProfile, TensorType, get_profile
from graphopt.runtime import PROVIDERS

ROLES = ("compute", "activation", "elementwise", "shared", "embedding")
DTYPES = {"activation": ("uint8", "int8", "uint16", "int16", "float8e4m3fn"),
          "weight": ("uint8", "int8", "float8e4m3fn")}
TOP_FIELDS = {"base", "name", "description", "activation", "weight", "ops", "drop_ops", "fold_relu",
              "bias_int32", "min_opset", "latency_check", "latency_provider", "gemm_bias", "default", "wide"}
WIDE_DTYPES = ("uint16", "int16")
SCALARS = {"fold_relu": bool, "bias_int32": bool, "latency_check": bool, "gemm_bias": bool,
           "min_opset": int, "latency_provider": str, "description": str, "name": str}


def is_profile_file(value: str) -> bool:
    return Path(value).suffix.lower() in CONFIG_SUFFIXES


def load_profile(path_text: str) -> QuantProfile:
    """The profile the file describes; InputError naming the file and the field when it is wrong."""
    path = Path(path_text)
    label = f"quantize profile '{path_text}'"
    if not path.is_file():
        raise InputError(f"{label}: no such file")
    data = read_config(path, label)
    if not isinstance(data, dict):
        raise InputError(f"{label}: expected a table of profile fields, got {type(data).__name__}")
    try:
        return _profile(data, path.stem)
    except ValueError as exc:
        raise InputError(f"{label}: {exc}") from None


def _profile(data: dict, stem: str) -> QuantProfile:
    unknown = sorted(set(data) - TOP_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_FIELDS))})")
    base = _base(data)
    if base is None:
        missing = [f for f in ("activation", "weight", "ops") if f not in data]
        if missing:
            raise ValueError(f"without `base`, {', '.join(missing)} must be given")
        if "drop_ops" in data:
            raise ValueError("drop_ops needs a `base` profile to drop from")
    ops = dict(base.ops) if base is not None else {}
    for op in _string_list(data.get("drop_ops", []), "drop_ops"):
        if op not in ops:
            raise ValueError(f"drop_ops: the base profile has no rule for '{op}'")
        del ops[op]
    ops.update(_ops(data.get("ops", {})))
    fields: dict[str, Any] = {"name": f"file:{stem}", "ops": ops, "latency_check": False,
                              "notes": (f"from file ({stem})",)}
    for key, kind in SCALARS.items():
        if key in data:
            fields[key] = _scalar(data[key], kind, key)
    for key in ("activation", "weight"):
        if key in data:
            fields[key] = _tensor_type(data[key], key)
    if "default" in data:
        fields["default"] = _rule("default", data["default"])
    if "wide" in data:
        fields["wide"] = _tensor_type(data["wide"], "wide")
    if fields.get("latency_provider", "cpu") not in PROVIDERS:
        raise ValueError(f"latency_provider: expected one of {', '.join(PROVIDERS)}, "
                         f"got {fields['latency_provider']!r}")
    if base is None:
        return QuantProfile(description=fields.pop("description", "profile file"),
                            fold_relu=fields.pop("fold_relu", False), **fields)
    return dataclasses.replace(base, **fields)


def _base(data: dict) -> QuantProfile | None:
    if "base" not in data:
        return None
    name = data["base"]
    if name not in PROFILES:
        raise ValueError(f"base: expected one of {', '.join(PROFILES)}, got {name!r}")
    return get_profile(name)


def _ops(table: Any) -> dict[str, OpRule]:
    if not isinstance(table, dict):
        raise ValueError("ops: expected a table {OpType: {role = ..., ...}}")
    return {op: _rule(f"ops.{op}", rule) for op, rule in table.items()}


def _rule(where: str, rule: Any) -> OpRule:
    """An op rule from its table (`ops.OpType` or `default`)."""
    if not isinstance(rule, dict):
        raise ValueError(f"{where}: expected a table of rule fields")
    known = {f.name for f in dataclasses.fields(OpRule)}
    unknown = sorted(set(rule) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if rule.get("role") not in ROLES:
        raise ValueError(f"{where}.role: expected one of {', '.join(ROLES)}, got {rule.get('role')!r}")
    return OpRule(**{k: _rule_field(v, f"{where}.{k}", k) for k, v in rule.items()})


def _rule_field(value: Any, where: str, key: str) -> Any:
    if key == "role":
        return value
    if key == "activations":
        return tuple(_index(v, where) for v in _list(value, where))
    if key in ("weight", "bias"):
        return _index(value, where)
    return _scalar(value, bool, where)


def _tensor_type(value: Any, key: str) -> TensorType:
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a table {{dtype = ..., symmetric = ...}}")
    unknown = sorted(set(value) - {"dtype", "symmetric", "bits"})
    if unknown:
        raise ValueError(f"{key}: unknown field(s) {', '.join(unknown)} (known: bits, dtype, symmetric)")
    allowed = WIDE_DTYPES if key == "wide" else DTYPES[key]
    if value.get("dtype") not in allowed:
        raise ValueError(f"{key}.dtype: expected one of {', '.join(allowed)}, got {value.get('dtype')!r}")
    bits = _scalar(value.get("bits", 8), int, f"{key}.bits")
    if bits not in (7, 8):
        raise ValueError(f"{key}.bits: expected 7 or 8, got {bits}")
    return TensorType(value["dtype"], _scalar(value.get("symmetric", value["dtype"].startswith("int")), bool,
                                              f"{key}.symmetric"), bits)


def _scalar(value: Any, kind: type, where: str) -> Any:
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected an input index (an integer >= 0), got {value!r}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{where}: expected a list of op type names")
    return items
