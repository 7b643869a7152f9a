"""`graphopt compare` and `graphopt bench` as API calls over model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graphopt.bench import BenchConfig, bench_model
from graphopt.data import input_specs, parse_shapes
from graphopt.data_files import load_feeds
from graphopt.errors import InputError
from graphopt.io import load_path
from graphopt.metrics import compare_outputs
from graphopt.run_data import synthesized_feeds
from graphopt.runtime import resolve_providers, run_model


def _feeds_for(path: Path, model, data, shapes, count: int = 2) -> tuple[Any, str]:
    """The feeds, and where they came from: DATA, or generated on shapes the model at `path`
    runs on (graphopt.shape_search, as `optimize` without data)."""
    if data is not None:
        return load_feeds(data, model), f"from {data}"
    feeds, choice = synthesized_feeds(path, model, parse_shapes(shapes or [], input_specs(model)), seed=0,
                                      count=count)
    return feeds, "synthesized" + (f", shapes {choice.described()} (found by running the model)"
                                   if choice.searched else "")


def compare_models(a: str, b: str, *, data: str | None = None, shapes: list[str] | None = None) -> dict[str, Any]:
    """Per-output metrics of model B against model A on the same feeds."""
    model_a, model_b = load_path(Path(a)), load_path(Path(b))
    names_a = [s.name for s in input_specs(model_a)]
    names_b = [s.name for s in input_specs(model_b)]
    if sorted(names_a) != sorted(names_b):
        raise InputError(f"the models take different inputs: {names_a} vs {names_b}")
    feeds, origin = _feeds_for(Path(a), model_a, data, shapes)
    ref = run_model(Path(a), feeds)
    cand = run_model(Path(b), feeds)
    metrics = compare_outputs(ref, cand)
    return {"a": a, "b": b, "feeds": len(feeds), "data": origin,
            "outputs": {n: m.to_dict() for n, m in metrics.items()}}


def format_comparison(result: dict[str, Any]) -> str:
    cols = ["max_abs", "mean_abs", "cosine", "snr_db", "max_ulps", "top1", "shape_match"]
    lines = [f"{result['b']} vs {result['a']} on {result['feeds']} feed(s) ({result['data']})",
             "output".ljust(24) + "".join(c.rjust(14) for c in cols)]
    for name, m in result["outputs"].items():
        cells = [(f"{m[c]:.6g}" if isinstance(m[c], float) else str(m[c])) for c in cols]
        lines.append(name[:24].ljust(24) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def bench_file(path: str, providers: list[str] | None, *, threads: int = 0, runs: int = 50,
               data: str | None = None, shapes: list[str] | None = None) -> dict[str, Any]:
    """Latency of one model file; refused (InputError) when no provider can run it at all."""
    BenchConfig(runs=runs, threads=threads)  # bad numbers fail before the model is read
    model = load_path(Path(path))
    choice = resolve_providers(providers)
    feeds, origin = _feeds_for(Path(path), model, data, shapes, count=1)
    feed = feeds[0]
    config = BenchConfig(tuple(choice.usable), runs=runs, warmup=max(3, runs // 10), threads=threads)
    results = bench_model(model, feed, config)
    failed = {name: r["error"] for name, r in results.items() if "error" in r}
    if failed and len(failed) == len(results):
        name, why = next(iter(failed.items()))
        raise InputError(f"{path}: no provider could run the model ({name}: {why})")
    return {"model": path, "threads": threads, "runs": runs, "data": origin, "results": results,
            "skipped": choice.skipped}


def format_bench(result: dict[str, Any]) -> str:
    lines = [f"{result['model']}  ({result['runs']} runs, threads={result['threads'] or 'default'}; "
             f"feed {result['data']})",
             "provider".ljust(12) + "ENABLE_ALL p50/p90 ms".rjust(24) + "DISABLE_ALL p50/p90 ms".rjust(26)]
    for provider, r in result["results"].items():
        if "error" in r:
            lines.append(f"{provider.ljust(12)}failed: {r['error']}")
            continue
        d = r["disable_all"]
        lines.append(provider.ljust(12) + f"{r['p50_ms']:.3f} / {r['p90_ms']:.3f}".rjust(24)
                     + f"{d['p50_ms']:.3f} / {d['p90_ms']:.3f}".rjust(26))
    for provider, why in result["skipped"].items():
        lines.append(f"skipped {provider}: {why}")
    return "\n".join(lines)
