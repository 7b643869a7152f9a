"""Deciding a budget miss on the first feeds (graphopt.staged) and the evaluator that does it."""

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.lossy import Evaluator
from graphopt.metrics import compare_outputs
from graphopt.staged import best_case, merge_metrics, promote, stages
from graphopt.tolerance import Budget
from tests.conftest import parse

IDENTITY = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, T, C] x) => (float[N, T, C] y) {
    y = Identity(x)
}
"""


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def feeds_and_noisy_reference(count: int, seed: int, noise: float, hard: int | None = None):
    """Probability feeds [1, T, 6] (T varies) and a reference that differs from them by `noise`
    (much more on feed `hard`): the identity model is the candidate."""
    rng = np.random.default_rng(seed)
    feeds, reference = [], []
    for i in range(count):
        logits = rng.normal(0, 3, (1, int(rng.integers(3, 9)), 6))
        feeds.append({"x": softmax(logits)})
        scale = noise * (40 if i == hard else 1)
        reference.append({"y": softmax(logits + rng.normal(0, scale, logits.shape))})
    return feeds, reference


def identity_model() -> ir.Model:
    return ir.serde.deserialize_model(parse(IDENTITY))


def test_stages_cut_the_order_into_growing_stages():
    order = list(range(64))
    assert [len(s) for s in stages(order)] == [1, 3, 8, 16, 36]
    assert [len(s) for s in stages(list(range(10)))] == [1, 3, 6]
    assert [len(s) for s in stages(list(range(4)))] == [1, 3]
    assert [len(s) for s in stages(list(range(3)))] == [1, 2]
    assert sum(stages(order), []) == order


def test_promote_moves_a_stage_to_the_front():
    assert promote([0, 1, 2, 3, 4, 5], [3, 5]) == [3, 5, 0, 1, 2, 4]


def test_merged_stages_equal_the_judged_statistics_over_all_feeds():
    feeds, reference = feeds_and_noisy_reference(30, seed=1, noise=0.5)
    cand = [{"y": f["x"]} for f in feeds]
    whole = compare_outputs(reference, cand)["y"]
    parts = [compare_outputs([reference[i] for i in s], [cand[i] for i in s], ) for s in stages(list(range(30)))]
    merged = merge_metrics(parts)["y"]
    for field in ("sample_cosine", "sample_snr_db", "max_abs", "top1", "top1_dist", "sample_top1"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-12), field
    assert (merged.samples, merged.positions) == (whole.samples, whole.positions)
    assert merged.cosine <= whole.cosine + 1e-12  # the whole-tensor cosine of a merge is a bound


def test_best_case_completes_a_rate_as_if_every_unseen_position_agreed():
    feeds, reference = feeds_and_noisy_reference(8, seed=2, noise=2.0)
    seen = compare_outputs(reference[:4], [{"y": f["x"]} for f in feeds[:4]])
    m = seen["y"]
    total = m.positions + 100
    best = best_case(seen, {"y": total})["y"]
    assert best.top1_dist == pytest.approx((m.top1_dist * m.positions + 100) / total)
    assert best.sample_cosine == m.sample_cosine  # worst-sample statistics stay as they are
    assert best_case(seen, {})["y"].top1_dist == 1.0  # unknown total: no bound


def test_a_miss_is_decided_on_the_first_stage_and_its_feeds_move_to_the_front():
    feeds, reference = feeds_and_noisy_reference(40, seed=3, noise=0.01, hard=30)
    ev = Evaluator(feeds, reference)
    budget = Budget({"cosine": 0.999})
    ok, metrics = ev.fits(identity_model(), budget)
    assert not ok and ev.feeds_seen == 40  # feed 30 is in the last stage: every feed ran
    assert ev.order[0] == 30 and ev.decided_early == 0  # the feed that misses alone goes first
    ok, _ = ev.fits(identity_model(), budget)
    assert not ok and ev.feeds_seen == 1 and ev.decided_early == 1
    ok, full = ev.fits(identity_model(), budget, early=False)
    assert not ok and ev.feeds_seen == 40 and full["y"].sample_cosine < 0.999


def test_a_fitting_candidate_is_measured_on_every_feed():
    feeds, reference = feeds_and_noisy_reference(20, seed=4, noise=1e-4)
    ev = Evaluator(feeds, reference)
    ok, metrics = ev.fits(identity_model(), Budget({"cosine": 0.99, "top1_dist": 0.9}))
    assert ok and ev.feeds_seen == 20 and metrics["y"].samples == 20


@pytest.mark.parametrize("seed", range(6))
def test_early_decisions_agree_with_full_measurements(seed):
    """Soundness: whatever the budget, deciding on the first stages gives the full-feed answer."""
    feeds, reference = feeds_and_noisy_reference(33, seed=10 + seed, noise=0.3, hard=seed * 5)
    ev = Evaluator(feeds, reference)
    full = compare_outputs(reference, [{"y": f["x"]} for f in feeds], ev.kinds)["y"]
    model = identity_model()
    for limits in ({"cosine": full.sample_cosine + 1e-6}, {"cosine": full.sample_cosine - 1e-6},
                   {"top1_dist": full.top1_dist + 1e-6}, {"top1_dist": full.top1_dist - 1e-6},
                   {"max_abs": full.max_abs * 0.999}, {"cosine": 0.5, "top1_dist": full.top1_dist + 1e-6}):
        budget = Budget(limits)
        assert ev.fits(model, budget)[0] == ev.fits(model, budget, early=False)[0] == \
            (not budget.violations(compare_outputs(reference, [{"y": f["x"]} for f in feeds], ev.kinds))), limits
