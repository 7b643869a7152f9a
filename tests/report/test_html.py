"""The HTML report: self-contained, built from the JSON report, rendered by a real browser."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from graphopt import optimize
from graphopt.cli import main
from graphopt.report.html import dict_table, render_html, waterfall_svg
from graphopt.report import write_report

from .browser import command, dump_dom, probe


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "default.opt.onnx"
    return optimize("models/default.onnx", out, bench=True, providers=["cpu"], bench_runs=3).report


def test_page_is_self_contained_with_charts_and_tables(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert not re.search(r"<script|<link|src=['\"]?http", page)  # nothing external, no script
    assert page.count("<svg") == 3  # size waterfall, error (log scale), cpu latency with spread
    assert "<section id=decisions>" in page
    applied = [r["name"] for r in report["passes"] if r["applied"]]
    for name in applied:
        assert f"<td>{name}</td>" in page
    assert report["environment"]["cpu"] in page and report["environment"]["onnxruntime"] in page


def test_waterfall_colours_improvements_and_regressions():
    svg = waterfall_svg("ms", [("input", 10.0), ("a", 6.0), ("b", 8.0), ("c", 8.0)])
    fills = re.findall(r"fill='(#[0-9a-f]+)'", svg)
    assert fills == ["#888", "#2a2", "#c33", "#bbb"]


def test_stats_tables_and_escaping():
    table = dict_table([{"layer": "<b>", "rank": 3}, {"layer": "x", "cosine": 0.5}])
    assert "&lt;b&gt;" in table and "<b>" not in table
    assert table.count("<th>") == 3 and table.count("<tr>") == 3


def test_bench_records_p10_p50_p90_in_the_json(report):
    for timing in [report["bench"]["input"]["cpu"]] + [r["bench"]["cpu"] for r in report["passes"] if r["bench"]]:
        assert timing["p10_ms"] <= timing["p50_ms"] <= timing["p90_ms"]
        assert timing["disable_all"]["p10_ms"] <= timing["disable_all"]["p90_ms"]
    compared = report["summary"]["speed_vs_input"]["cpu"]
    assert set(compared) == {"ratio", "within_noise", "base_ms", "new_ms", "timed"}
    assert compared["ratio"] == pytest.approx(report["summary"]["speedup_enable_all"]["cpu"])


def test_cli_writes_json_and_html_reports(tmp_path, capsys):
    out, html_path, json_path = tmp_path / "o.onnx", tmp_path / "r.html", tmp_path / "r.json"
    assert main(["optimize", "models/default.onnx", "-o", str(out), "--report", str(json_path),
                 "--report", str(html_path), "--quiet"]) == 0
    data = json.loads(json_path.read_text())
    assert html_path.read_text(encoding="utf-8") == render_html(data)
    printed = capsys.readouterr().out
    assert "nodes 32 -> " in printed and "rolled back 0" in printed
    assert oct(html_path.stat().st_mode & 0o777) != "0o600"


def test_failed_render_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "r.html"
    target.write_text("old")
    with pytest.raises(AttributeError):
        write_report({"model": None}, target)  # render fails before anything is written
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_real_browser_renders_the_page(tmp_path, report):
    page = tmp_path / "report.html"
    write_report(report, page)
    dom = dump_dom(page, tmp_path)
    assert dom.count("<svg") == 3 and "Per-pass charts" in dom
    applied = sum(1 for r in report["passes"] if r["applied"])
    assert dom.count("<rect") == 3 * (applied + 1)  # one bar per step, per chart
    seen = probe(page, ["#decisions", "#decisions .pass", "svg[aria-label^=error] rect"], tmp_path)
    assert all(found["visible"] for found in seen.values()), seen
    for rec in report["passes"]:  # e.g. fuse-gelu under an opset it does not take
        if rec["skipped"]:
            assert f"skipped: {rec['skipped']}" in seen["#decisions"]["text"]
    shot = tmp_path / "shot.png"
    subprocess.run(command(tmp_path) + [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
