"""tools/compare_peers.py's results file: one section per model, partial reruns keep the rest."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import compare_peers  # noqa: E402
from models.tasks import Task  # noqa: E402


def _task(name: str) -> Task:
    return Task(name, Path(f"/models/{name}.onnx"), [], [], {}, "cosine", 0.99, lambda *a: 1.0)


def _rows(ms: float) -> list:
    base = compare_peers.Row("FP32 input", seconds=0.0, nodes=10, mb=1.0, fidelity=1.0, ms={1: 10.0, 0: 5.0})
    tool = compare_peers.Row("graphopt int8", seconds=3.0, nodes=12, mb=0.5, fidelity=0.995, ms={1: ms, 0: ms / 2})
    tool.printed = ["auto search (goal: latency)", " *int8   ok"]
    return [base, tool]


def test_rerunning_one_model_keeps_the_other_sections_in_task_order(tmp_path):
    compare_peers.write_results(tmp_path, [(_task("rec"), _rows(8.0)), (_task("minilm"), _rows(4.0))], runs=3)
    first = (tmp_path / "results.md").read_text()
    assert first.index("## minilm") < first.index("## rec")  # models/tasks.py order, not run order
    assert "| graphopt int8 | 3.0 | 12 | 0.5 | 0.9950 | 4.00 | 2.50x |" in first
    assert "auto search (goal: latency)" in first
    compare_peers.write_results(tmp_path, [(_task("minilm"), _rows(2.0))], runs=3)
    second = (tmp_path / "results.md").read_text()
    assert "| 2.00 | 5.00x |" in second and "| 4.00 | 2.50x |" not in second
    assert "| 8.00 | 1.25x |" in second  # rec's section, as it was measured
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["minilm.md", "minilm.svg", "rec.md", "rec.svg"]
    assert second.count("Measured ") == 2


def test_the_commit_line_ignores_the_tools_own_output_in_docs(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(compare_peers, "ROOT", tmp_path)
    (tmp_path / "docs" / "results.md").write_text("new results")
    assert "+ local changes" not in compare_peers.graphopt_commit()
    (tmp_path / "code.py").write_text("x = 2")
    assert compare_peers.graphopt_commit().endswith(" + local changes")
