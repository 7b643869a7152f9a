"""The report shows what decided the result: every pass's decisions (quantize's kept-float nodes,
speed check, budget fallbacks, calibration; skips; rollbacks), latency with its spread and noise
called noise, and an error chart on which an exact pass does not look alarming."""

from __future__ import annotations

import html
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphopt import optimize
from graphopt.bench import compare_timings, within_noise
from graphopt.report import format_summary
from graphopt.report.charts import error_rows
from graphopt.report.html import render_html
from graphopt.report.markup import fmt
from models.builders import mlp

from .browser import probe


def _sensitive_mlp() -> onnx.ModelProto:
    """fc0 gives fc1's input one huge channel (fc1 undoes it): per-tensor int8 of that input wipes
    out the rest, so an accuracy budget has to put fc1 back in float."""
    proto = mlp(in_features=16, hidden=32, layers=2)
    for init in proto.graph.initializer:
        data = numpy_helper.to_array(init).copy()
        if data.shape in ((16, 32), (32, 32)):
            if data.shape == (16, 32):
                data[:, 0] *= 400.0
            else:
                data[0, :] /= 400.0
            init.CopyFrom(numpy_helper.from_array(data, init.name))
    return proto


def _feeds(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(count)]


def _quantize(options: str) -> dict:
    proto = _sensitive_mlp()
    assert proto.graph.input[0].name == "x"
    return optimize(proto, passes=f"quantize:cache_dir=off;smooth=false{options}", calib=_feeds(6, 1),
                    data=_feeds(3, 2), budget={"cosine": 0.999}).report


@pytest.fixture(scope="module")
def fallback_report() -> dict:
    return _quantize(";speed_check=false")


def _stats(report: dict, name: str = "quantize") -> dict:
    return next(r["stats"] for r in report["passes"] if r["name"] == name)


def test_kept_float_nodes_fallbacks_and_calibration_are_in_the_page(fallback_report):
    stats, page = _stats(fallback_report), render_html(fallback_report)
    assert stats["kept_float"] and stats["budget"]["fallbacks"]
    for node, reason in stats["kept_float"].items():
        assert re.search(f"<td>{re.escape(node)}</td><td>{re.escape(html.escape(reason))}</td>", page)
    for fallback in stats["budget"]["fallbacks"]:  # each with its measured effect
        effect = f"{fallback['float'] - fallback['quantized']:+.4g}"
        assert f"<td>{fallback['node']}</td>" in page and effect in page
    assert "Accuracy budget cosine ≥ 0.999: <b>fits</b>" in page
    assert stats["budget"]["fallback_to"] == "float" and "node(s) put back in float" in page
    calib = stats["calibration"]
    assert f"Calibrated by {calib['method']} on {calib['source']}" in page
    assert "No speed check." in page  # speed_check=false says so instead of dropping it


def test_widened_fallbacks_are_not_called_float(fallback_report):
    import copy

    report = copy.deepcopy(fallback_report)
    budget = next(r for r in report["passes"] if r["name"] == "quantize")["stats"]["budget"]
    budget["fallback_to"] = "uint16"  # what a profile with a wide type (qnn) reports
    page = render_html(report)
    assert "node(s) widened to uint16 activations" in page and "with it in uint16" in page
    assert "put back in float" not in page


def test_speed_decision_with_its_timings_is_in_the_page():
    report = _quantize("")
    speed, page = _stats(report)["speed"], render_html(report)
    assert {"float", "int8"} <= set(speed["latency_ms"])
    assert f"Speed check on {speed['provider']}: <b>{speed['chosen']}</b> chosen" in page
    for ms in speed["latency_ms"].values():
        assert f"<td class=num>{fmt(ms)}</td>" in page


def _record(name: str, cosine: float | None = 1.0, ok: bool = True, bench: dict | None = None,
            stats: dict | None = None, **fields) -> dict:
    verify = None if cosine is None else {"ok": ok, "problems": [], "max_abs": 1e-6, "vs_input": {"cosine": cosine}}
    return {"name": name, "options": {}, "applied": True, "rolled_back": False, "seconds": 0.01,
            "stats": stats or {}, "size": {"nodes": 5, "bytes": 1000}, "verify": verify, "bench": bench,
            "error": None, "skipped": None, **fields}


def _timing(p10: float, p50: float, p90: float) -> dict:
    return {"p10_ms": p10, "p50_ms": p50, "p90_ms": p90, "runs": 20}


def _report(passes: list[dict], base: dict | None = None) -> dict:
    size = {"nodes": 5, "params": 10, "bytes": 1000}
    summary = {"passes_applied": [r["name"] for r in passes if r["applied"]],
               "passes_rolled_back": [r["name"] for r in passes if r["rolled_back"]],
               "nodes": [5, 5], "params": [10, 10], "bytes": [1000, 1000]}
    final = next((r["bench"]["cpu"] for r in reversed(passes) if r["bench"]), None)
    if base and final:
        summary["speedup_enable_all"] = {"cpu": base["p50_ms"] / final["p50_ms"]}
        summary["speed_vs_input"] = {"cpu": compare_timings(base, final)}
    return {"model": {"input": "m.onnx", "output": None, "before": size, "after": size}, "passes": passes,
            "bench": {"input": {"cpu": base}} if base else None, "summary": summary, "environment": {}, "data": {}}


def test_exact_error_is_a_grey_sliver_and_only_a_broken_tolerance_is_red():
    report = _report([
        _record("cleanup", cosine=1 - 6e-15),  # float rounding of an exact rewrite
        _record("fold-constants", cosine=1 - 3e-6),  # re-association, within its tolerance
        _record("quantize", cosine=0.995),  # lossy, within the budget
        _record("fuse-bn", cosine=0.9, ok=False, applied=False, rolled_back=True, error="fuse-bn: too far"),
    ])
    kinds = [(label, kind) for label, _, kind, _ in error_rows(report)]
    assert kinds == [("input", "base"), ("cleanup", "exact"), ("fold-constants", "ok"),
                     ("quantize", "lossy"), ("fuse-bn", "bad")]
    page = render_html(report)
    chart = re.search(r"<svg[^>]*aria-label='error[^']*'.*?</svg>", page).group(0)
    exact = re.search(r"<rect class='exact'[^>]*width=([\d.]+)[^>]*fill='([^']+)'", chart)
    assert float(exact.group(1)) <= 1.0 and exact.group(2) != "#c33"
    assert "exact within float precision" in chart and "within reassoc tolerance" in chart
    assert chart.count("fill='#c33'") == 1 and "over tolerance: rolled back" in chart


def test_within_noise_by_overlapping_spread_or_close_medians():
    assert within_noise(_timing(0.15, 0.16, 0.19), _timing(0.17, 0.178, 0.20))  # ranges overlap
    assert within_noise(_timing(1.0, 1.0, 1.0), _timing(1.03, 1.03, 1.03))  # medians 3% apart
    assert not within_noise(_timing(1.0, 1.05, 1.1), _timing(0.5, 0.52, 0.55))
    assert within_noise({"p50_ms": 1.0, "p90_ms": 1.2}, _timing(1.1, 1.15, 1.3))  # no p10: p50 stands in


def test_speed_within_noise_is_called_the_same_speed():
    base = _timing(0.150, 0.160, 0.190)
    report = _report([_record("cleanup", bench={"cpu": _timing(0.165, 0.178, 0.200)})], base)
    text = format_summary(report)
    assert "cpu: same speed as the input model (within noise: p10-p90 0.150-0.190 -> 0.165-0.200 ms)" in text
    assert "0.90x" not in text
    page = render_html(report)
    assert "same speed as the input model (within noise" in page and "0.90x" not in page
    assert "<rect class='noise'" in page and "within noise" in page
    assert "0.178 (0.165-0.200)" in page  # the passes table shows the spread


def test_speed_beyond_noise_gives_the_ratio_with_both_spreads():
    base = _timing(0.95, 1.0, 1.1)
    report = _report([_record("quantize", cosine=0.995, bench={"cpu": _timing(0.48, 0.5, 0.55)})], base)
    assert ("cpu: 2.00x the input model's speed (p50 1.000 -> 0.500 ms, p10-p90 0.950-1.100 -> 0.480-0.550 ms)"
            in format_summary(report))
    page = render_html(report)
    assert "<rect class='faster'" in page and "2.00x the speed before" in page


def test_skipped_and_rolled_back_passes_say_why():
    report = _report([_record("fuse-gelu", cosine=None, applied=False, skipped="opset 17 outside [20, ...)",
                              stats={"skipped": "opset 17 outside [20, ...)"}),
                      _record("fuse-bn", cosine=0.9, ok=False, applied=False, rolled_back=True,
                              error="fuse-bn: y: max abs error 0.3 > 1e-05")])
    page = render_html(report)
    decisions = page[page.index("<section id=decisions>"):]
    assert "skipped: opset 17 outside [20, ...)" in decisions
    assert decisions.count("opset 17 outside") == 1  # the stat repeating the reason is not shown twice
    assert "rolled back: fuse-bn: y: max abs error 0.3 &gt; 1e-05" in decisions


def test_every_stat_is_rendered_by_shape_and_long_tables_are_capped():
    stats = {"mode": "energy", "ranks": [{"layer": "fc0", "rank": 3}],
             "smoothed": {"t0": {"alpha": 0.5, "error": {"none": 1.0, "0.5": 0.1}}},
             "kept_float": {f"node{i}": "kept float by the accuracy budget" for i in range(120)}}
    page = render_html(_report([_record("svd", cosine=0.999, stats=stats)]))
    assert "energy" in page and "<th>rank</th>" in page and "<th>alpha</th>" in page
    assert "none: 1, 0.5: 0.1" in page  # a nested dict inside a table cell
    assert "<td>node49</td>" in page and "<td>node50</td>" not in page
    assert "(70 more rows in the JSON report)" in page and "120 node(s) kept in float" in page


def test_quiet_passes_share_one_line():
    report = _report([_record("fuse-pad-conv", cosine=None, applied=False, stats={"rewrites": {}})])
    assert "No change and nothing to report: fuse-pad-conv" in render_html(report)


def test_real_browser_shows_the_quantize_decisions(tmp_path, fallback_report):
    page = tmp_path / "quantize.html"
    page.write_text(render_html(fallback_report), encoding="utf-8")
    keys = ["[data-key=kept_float]", "[data-key=budget]", "[data-key=calibration]"]
    seen = probe(page, ["#decisions"] + keys, tmp_path)
    assert all(found["visible"] for found in seen.values()), seen
    for node, reason in _stats(fallback_report)["kept_float"].items():
        assert node in seen["[data-key=kept_float]"]["text"] and reason in seen["[data-key=kept_float]"]["text"]


def test_cpu_line_names_the_simd_flags_int8_kernels_depend_on(monkeypatch):
    import graphopt.report.document as document

    monkeypatch.setattr(document, "cpu_flags", lambda: {"avx2", "avx512_vnni", "sse4_2"})
    line = document.cpu_line()
    assert line.startswith(document.cpu_name()) and "flags: avx2 avx512_vnni (no amx_int8)" in line
    monkeypatch.setattr(document, "cpu_flags", lambda: set())
    assert "flags: none (no avx512_vnni, amx_int8)" in document.cpu_line()
