"""Pass specs, typed options and recipes: good specs parse, bad ones name the problem."""

from __future__ import annotations

import pytest

from graphopt.errors import InputError
from graphopt.recipes import passes_from_recipe, passes_from_spec


def test_spec_with_typed_options():
    passes = passes_from_spec("cleanup,fold-constants:generator_limit=16;max_iterations=2")
    assert [p.name for p in passes] == ["cleanup", "fold-constants"]
    assert passes[1].options.generator_limit == 16
    assert passes[1].options.max_iterations == 2
    assert isinstance(passes[1].options.generator_limit, int)


@pytest.mark.parametrize("spec, message", [
    ("cleanup,nonsense", "unknown pass 'nonsense'"),
    ("fold-constants:generator_limit=lots", "option generator_limit='lots': expected an integer"),
    ("fold-constants:bogus=1", "unknown option 'bogus'"),
    ("fold-constants:max_iterations=0", "max_iterations must be >= 1"),
    ("fold-constants:generator_limit", "malformed option 'generator_limit'"),
    ("cleanup,,fold-constants", "empty pass name"),
    ("dedup-initializers:max_bytes=-5", "max_bytes must be >= 0"),
])
def test_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        passes_from_spec(spec)


def test_builtin_and_file_recipes(tmp_path):
    assert [p.name for p in passes_from_recipe("lossless")][1:3] == ["lift-constants", "cleanup"]
    recipe = tmp_path / "r.toml"
    recipe.write_text('passes = ["cleanup", "fold-constants:generator_limit=8"]\n')
    passes = passes_from_recipe(str(recipe))
    assert passes[1].options.generator_limit == 8


@pytest.mark.parametrize("content, message", [
    ("passes = [", "not valid TOML"),
    ("passes = []", "non-empty list"),
    ('other = ["cleanup"]', "non-empty list"),
])
def test_bad_recipe_files(tmp_path, content, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(content)
    with pytest.raises(InputError, match=message):
        passes_from_recipe(str(recipe))


@pytest.mark.parametrize("name, content", [
    ("r.json", '{"passes": ["cleanup", "fold-constants:generator_limit=8"]}'),
    ("r.yaml", "passes:\n  - cleanup\n  - fold-constants:generator_limit=8\n"),
])
def test_json_and_yaml_recipes_take_the_toml_schema(tmp_path, name, content):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")  # optional: PyYAML is not a dependency
    recipe = tmp_path / name
    recipe.write_text(content)
    passes = passes_from_recipe(str(recipe))
    assert [p.name for p in passes] == ["cleanup", "fold-constants"] and passes[1].options.generator_limit == 8


@pytest.mark.parametrize("name, content, message", [
    ("r.json", '{"passes": ["cleanup", "no-such-pass"]}', "unknown pass 'no-such-pass'"),
    ("r.json", '{"passes": [', r"not valid JSON \(Expecting value: line 1 column 13"),
    ("r.json", '["cleanup"]', "expected a non-empty list of strings"),
    ("r.yaml", "passes:\n\t- cleanup\n", r"not valid YAML \(.*cannot start any token.*line 2, column 1"),
    ("r.yml", "passes: cleanup\n", "expected a non-empty list of strings"),
])
def test_bad_json_and_yaml_recipes_are_one_line(tmp_path, name, content, message):
    if name.endswith((".yaml", ".yml")):
        pytest.importorskip("yaml")  # optional: PyYAML is not a dependency
    recipe = tmp_path / name
    recipe.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        passes_from_recipe(str(recipe))
    assert "\n" not in str(info.value)


def test_unknown_recipe_name():
    with pytest.raises(InputError, match="unknown recipe"):
        passes_from_recipe("turbo")


def test_yaml_recipe_without_pyyaml_says_what_to_do(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - cleanup\n")
    with pytest.raises(InputError, match=r"reading YAML needs PyYAML \(pip install pyyaml\), or write the file "
                                         r"as \.toml or \.json$"):
        passes_from_recipe(str(recipe))


@pytest.mark.parametrize("options, message", [
    ({"method": "foo"}, "method must be one of minmax, percentile, entropy, mse, got 'foo'"),
    ({"per_channel": "yes"}, "per_channel must be a bool, got str 'yes'"),
    ({"exclude_ops": "Conv"}, "exclude_ops must be a list, got str 'Conv'"),
    ({"exclude_ops": ["Conv", 3]}, "exclude_ops must be a str, got int 3"),
])
def test_api_option_values_are_checked_against_their_types(options, message):
    from graphopt.registry import get_pass

    with pytest.raises(InputError, match="^pass 'quantize': " + message.replace("(", r"\(").replace(")", r"\)")):
        get_pass("quantize")(**options)


def test_api_option_lists_become_tuples_and_ints_pass_as_floats():
    from graphopt.registry import get_pass

    options = get_pass("quantize-weights")(exclude_ops=["MatMul"], stats_memory=1, block_size=64).options
    assert options.exclude_ops == ("MatMul",) and options.stats_memory == 1 and options.block_size == 64
    with pytest.raises(InputError, match="block_size must be an int, got bool True"):
        get_pass("quantize-weights")(block_size=True)
