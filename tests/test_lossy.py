"""Budget sharing and held-out evaluation for lossy passes."""

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.errors import InputError
from graphopt.lossy import Evaluator, budget_share, effective_budget, summarize
from graphopt.metrics import compare_arrays
from graphopt.tolerance import Budget
from tests.conftest import parse

MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    y = Mul(x, x)
}
"""


def test_share_of_cosine_and_max_abs():
    current = {"y": compare_arrays(np.ones(4), np.ones(4))}  # cosine 1, max_abs 0
    share = budget_share(Budget({"cosine": 0.98, "max_abs": 0.2}), current, 0.5)
    assert share.limits["cosine"] == pytest.approx(0.99)
    assert share.limits["max_abs"] == pytest.approx(0.1)


def test_share_outside_range_is_rejected():
    with pytest.raises(InputError, match="share"):
        budget_share(Budget({"cosine": 0.9}), {}, 0.0)


def test_default_budget_when_none_set():
    assert effective_budget(Budget()).limits == {"cosine": 0.99, "top1_dist": 0.999}
    assert effective_budget(Budget({"top1": 0.9})).limits == {"top1": 0.9}


def test_evaluator_measures_against_reference():
    model = ir.serde.deserialize_model(parse(MODEL))
    feeds = [{"x": np.arange(8, dtype=np.float32).reshape(2, 4)}]
    ev = Evaluator.for_model(model, feeds)
    ok, metrics = ev.fits(model, Budget({"max_abs": 0.0}))
    assert ok and summarize(metrics)["cosine"] == pytest.approx(1.0)
    ev.reference = [{"y": feeds[0]["x"] ** 2 + 1}]
    ok, metrics = ev.fits(model, Budget({"max_abs": 0.5}))
    assert not ok and summarize(metrics)["max_abs"] == pytest.approx(1.0)


@pytest.mark.parametrize("item", ["cosine=nan", "cosine=inf", "cosine=1.5", "cosine=-2", "top1=-0.1",
                                  "top1_dist=1.01", "snr_db=inf", "snr_db=nan", "max_abs=-1", "max_abs=inf",
                                  "y:cosine=nan", ":cosine=0.9", "cosin=0.9", "cosine0.9"])
def test_bad_budget_values_are_refused(item):
    with pytest.raises(InputError, match="--budget"):
        Budget.parse([item])


def test_budget_bounds_checked_on_direct_construction_too():
    with pytest.raises(InputError, match="cosine must be a number in"):
        Budget({"cosine": float("nan")})
    assert Budget.parse(["snr_db=-5", "max_abs=0", "top1=1"]).limits == {"snr_db": -5, "max_abs": 0, "top1": 1}


def _metrics(**outputs):
    return {name: compare_arrays(ref, cand) for name, (ref, cand) in outputs.items()}


def test_per_output_entries_judge_their_output_only():
    ones = np.ones((4, 3), np.float32)
    metrics = _metrics(**{"a:0": (ones, ones), "b": (ones, ones + 0.5)})
    budget = Budget.parse(["a:0:max_abs=0.1", "cosine=0.9"])
    assert budget.limits == {"a:0:max_abs": 0.1, "cosine": 0.9}
    assert budget.violations(metrics) == []
    assert Budget.parse(["b:max_abs=0.1"]).violations(metrics) == ["b: max_abs 0.5 vs budget 0.1"]
    with pytest.raises(InputError, match=r"no output 'c' \(outputs: a:0, b\)"):
        Budget.parse(["c:top1=0.9"]).violations(metrics)


def test_worst_and_share_read_per_output_keys():
    from graphopt.lossy import worst

    ones = np.ones(4, np.float32)
    metrics = _metrics(a=(ones, ones), b=(ones, ones + 0.2))
    assert worst(metrics, "max_abs") == pytest.approx(0.2)
    assert worst(metrics, "a:max_abs") == 0.0
    share = budget_share(Budget({"a:max_abs": 0.2}), metrics, 0.5)
    assert share.limits == {"a:max_abs": pytest.approx(0.1)}


def _ctc_metrics():
    from graphopt.metrics import compare_outputs

    logits = np.full((2, 10, 6), -9.0, np.float32)
    logits[..., 0] = 9.0
    feeds = [{"x": np.zeros((2, 3), np.float32)}]
    reference = [{"logits": logits, "emb": np.ones((2, 4), np.float32)}]
    return feeds, reference, compare_outputs(reference, reference)


def test_budget_statement_names_statistic_and_sample_counts():
    from graphopt.lossy import budget_statement

    _, _, metrics = _ctc_metrics()
    statement = budget_statement(effective_budget(Budget()), metrics, explicit=False)
    rows = {(e["entry"], e["output"]): e for e in statement["entries"]}
    emb = rows["cosine>=0.99", "emb"]
    assert (emb["statistic"], emb["samples"]) == ("worst-sample cosine", 2)
    top1 = rows["top1_dist>=0.999", "logits"]
    assert (top1["statistic"], top1["samples"], top1["positions"], top1["ok"]) == \
        ("per-position top-1 agreement", 2, 20, True)
    assert ("top1_dist>=0.999", "emb") not in rows and statement["uncovered"] == []
    assert statement["kinds"]["logits"] == "class scores per position [N, T, C], logits"


def test_explicit_budget_without_top1_warns_about_class_scores(caplog):
    import logging

    from graphopt.lossy import budget_statement, check_run_budget
    from graphopt.output_kinds import infer_kinds

    feeds, reference, metrics = _ctc_metrics()
    logger = logging.getLogger("graphopt.test")
    with caplog.at_level(logging.WARNING, logger="graphopt.test"):
        lines = check_run_budget(Budget({"cosine": 0.98}), infer_kinds(reference, feeds), logger)
    assert len(lines) == 1 and "output 'logits'" in lines[0] and "output 'logits'" in caplog.text
    assert budget_statement(Budget({"cosine": 0.98}), metrics, explicit=True)["uncovered"] == lines
    assert check_run_budget(Budget.parse(["cosine=0.98", "logits:top1=0.99"]), infer_kinds(reference, feeds), logger) == []
    assert check_run_budget(Budget(), infer_kinds(reference, feeds), logger) == []  # the default covers it
    with pytest.raises(InputError, match="no output 'logit'"):
        check_run_budget(Budget.parse(["logit:top1=0.99"]), infer_kinds(reference, feeds), logger)


@pytest.mark.parametrize("count, threshold", [(1, 1), (7, 1), (7, 5), (7, 7), (64, 33), (5, None)])
def test_smallest_fitting_prefix_finds_the_threshold_with_few_measurements(count, threshold):
    from graphopt.lossy import smallest_fitting_prefix

    asked = []

    def fits(k):
        asked.append(k)
        return threshold is not None and k >= threshold

    assert smallest_fitting_prefix(count, fits) == threshold
    assert len(asked) <= 2 * max(count, 2).bit_length() + 1


def test_the_search_reference_is_computed_when_a_pass_first_asks_for_it():
    """api passes a function for file inputs: nothing runs until ctx.evaluator, and only once."""
    from graphopt.pass_api import PassContext

    feeds = [{"x": np.ones((1, 4), np.float32)} for _ in range(3)]
    calls = []

    def compute():
        calls.append(1)
        return [{"y": f["x"]} for f in feeds]

    ctx = PassContext(search=feeds, search_reference=compute)
    assert calls == []
    first = ctx.evaluator(None)
    assert calls == [1] and first.reference[0]["y"].shape == (1, 4)
    assert ctx.evaluator(None) is first and calls == [1]
