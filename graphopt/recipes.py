"""Pass specs and recipes: turn `--passes SPEC` / `--recipe NAME|FILE.toml` into pass objects.

SPEC is `name` or `name:key=value;key=value`, comma-separated. A recipe file is TOML with
`passes = ["cleanup", "fold-constants:generator_limit=1024", ...]`, or JSON / YAML with the same
`{"passes": [...]}` (Olive and ModelOpt users write JSON and YAML configs).
"""

from __future__ import annotations

from pathlib import Path

from graphopt.config_files import CONFIG_SUFFIXES, read_config
from graphopt.errors import InputError
from graphopt.options import parse_options
from graphopt.pass_api import Pass
from graphopt.registry import get_pass
from graphopt.targets import adapt_recipe, get_target

RECIPES: dict[str, tuple[str, ...]] = {
    "lossless": ("initializers-not-inputs", "lift-constants", "cleanup", "fold-constants", "simplify",
                 "fuse-bn", "fuse-conv-affine", "fuse-pad-conv", "fuse-activations", "fuse-layernorm",
                 "fuse-rmsnorm", "fuse-gelu", "cleanup"),
}
# `modern`: the lossless recipe after raising the opset to 20, so exports from older opsets
# get the standard Gelu (opset 20) as well; the opset pass never lowers an opset.
RECIPES["modern"] = ("opset:target=20", *RECIPES["lossless"])
# `int8`: static INT8 (Q/DQ) after the `modern` clean-up, sized to the run's budget. Q/DQ
# already raises the opset (per-channel DequantizeLinear needs 13), so the int8 recipe takes the
# opset-20 forms too: HardSwish and Gelu kernels, which keep float islands fast where the
# speed check leaves a family in float (PP-OCR cls runs markedly faster; tools/bench_quantize.py,
# measured: docs/design-measurements.md).
RECIPES["int8"] = (*RECIPES["modern"], "quantize")
# `int8-dynamic`: INT8 weights with activations quantized at run time (no calibration), after
# the `modern` clean-up; `--target ort` writes ONNX Runtime's DynamicQuantizeMatMul (targets.py).
RECIPES["int8-dynamic"] = (*RECIPES["modern"], "quantize-dynamic")
# `int4`: weight-only block-wise INT4 (activations stay float) after the `modern` clean-up, sized
# to the budget; `--target ort` writes MatMulNBits / GatherBlockQuantized (targets.py), the other
# targets DequantizeLinear with block_size at opset 21.
RECIPES["int4"] = (*RECIPES["modern"], "quantize-weights")
# `fp16`: float16 weights and compute after the `modern` clean-up; ops whose measured ranges
# leave float16 and those the budget needs stay float32 (passes/precision). For GPU / NPU
# deployments: ORT's CPU provider computes most float16 ops in float32.
RECIPES["fp16"] = (*RECIPES["modern"], "float16")
# `compress`: structured pruning, low-rank and int8 chained under one budget; each lossy pass may
# spend its share of what is left (prune a third, svd half of the rest, quantize the remainder).
RECIPES["compress"] = (*RECIPES["lossless"], "prune-channels:mode=budget;budget_share=0.34",
                       "svd:select=budget;budget_share=0.5", "quantize", "cleanup")
DEFAULT_RECIPE = "lossless"


def split_spec(spec: str) -> list[str]:
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise InputError(f"--passes '{spec}': empty pass name (expected name[:key=value;...],...)")
    return items


def parse_pass_spec(item: str) -> Pass:
    """`name` or `name:key=value;key=value` -> a configured pass instance."""
    name, _, rest = item.partition(":")
    cls = get_pass(name.strip())
    raw: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in rest.split(";"))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"pass '{cls.name}': malformed option '{pair}' (expected key=value)")
        raw[key.strip()] = value.strip()
    return cls(parse_options(cls.name, cls.Options, raw))


def passes_from_spec(spec: str) -> list[Pass]:
    return [parse_pass_spec(item) for item in split_spec(spec)]


RECIPE_FILES = CONFIG_SUFFIXES  # one schema in each: {"passes": ["name:key=value", ...]}


def passes_from_recipe(recipe: str, target: str = "portable") -> list[Pass]:
    """A built-in recipe name (adapted to the deployment target) or a TOML, JSON or YAML file
    with `passes` (the same schema in each: a list of pass specs)."""
    if recipe in RECIPES:
        return [parse_pass_spec(item) for item in adapt_recipe(RECIPES[recipe], get_target(target))]
    path = Path(recipe)
    if path.suffix.lower() not in RECIPE_FILES:
        raise InputError(f"--recipe '{recipe}': unknown recipe (built-in: {', '.join(RECIPES)}; "
                         "or a .toml, .json or .yaml file)")
    if not path.is_file():
        raise InputError(f"--recipe '{recipe}': no such file")
    data = read_config(path, f"--recipe '{recipe}'")
    items = data.get("passes") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise InputError(f"--recipe '{recipe}': expected a non-empty list of strings `passes = [...]`")
    return [parse_pass_spec(item) for item in items]
