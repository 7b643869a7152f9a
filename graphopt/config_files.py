"""Reading the user's TOML, JSON and YAML configuration files (recipes, quantization profiles):
one parser per format, every failure one line that names the file, the format and the place."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from graphopt.errors import InputError

CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def read_config(path: Path, label: str) -> Any:
    """The parsed document of a .toml, .json, .yaml or .yml file; `label` starts each error."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not text ({exc})") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{label}: not valid TOML ({exc})") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{label}: not valid JSON ({exc})") from None
    if suffix not in (".yaml", ".yml"):
        raise InputError(f"{label}: expected a {', '.join(CONFIG_SUFFIXES)} file")
    try:
        import yaml
    except ImportError:
        raise InputError(f"{label}: reading YAML needs PyYAML (pip install pyyaml), "
                         "or write the file as .toml or .json") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: not valid YAML ({' '.join(str(exc).split())})") from None
