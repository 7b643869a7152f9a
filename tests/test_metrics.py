"""Output metrics (graphopt.metrics) against direct numpy formulas, including the blocked paths."""

import numpy as np
import pytest

from graphopt.metrics import CHUNK, compare_arrays, compare_outputs


def _reference_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    spacing = np.spacing(np.maximum(np.abs(ref), np.abs(cand))).astype(np.float64).ravel()
    return {"max_abs": np.max(np.abs(r - c)), "mean_abs": np.mean(np.abs(r - c)),
            "cosine": np.dot(r, c) / np.linalg.norm(r) / np.linalg.norm(c),
            "snr_db": 10 * np.log10(np.sum(r**2) / np.sum((r - c) ** 2)),
            "max_ulps": np.max(np.abs(r - c) / spacing), "ref_max_abs": np.max(np.abs(r))}


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_metrics_match_the_formulas_across_blocks(dtype):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, CHUNK + 17)).astype(dtype)  # more than one block, a ragged last one
    cand = (ref + rng.normal(0, 1e-2, ref.shape)).astype(dtype)
    got = compare_arrays(ref, cand)
    for key, want in _reference_metrics(ref, cand).items():
        assert getattr(got, key) == pytest.approx(want, rel=1e-9), key


def test_float32_ulps_at_exponent_edges():
    one = np.float32(1.0)
    values = np.array([one, np.float32(2.0), np.float32(1e-40), np.float32(0.0)], np.float32)
    nudged = np.nextafter(values, np.float32(np.inf))
    assert compare_arrays(values, nudged).max_ulps == 1.0  # one step everywhere, subnormals too
    three = values.copy()
    three[0] = np.nextafter(np.nextafter(np.nextafter(one, np.float32(2)), np.float32(2)), np.float32(2))
    assert compare_arrays(values, three).max_ulps == 3.0


def test_nan_handling():
    ref = np.array([np.nan, 1.0, 2.0], np.float32)
    same_nan = compare_arrays(ref, ref.copy())
    assert same_nan.max_abs == 0.0 and same_nan.max_ulps == 0.0  # NaN where the reference has NaN is equal
    new_nan = compare_arrays(np.array([1.0, 2.0], np.float32), np.array([np.nan, 2.0], np.float32))
    assert np.isnan(new_nan.max_abs) and new_nan.cosine == -1.0
    all_nan = compare_arrays(np.ones(3, np.float32), np.full(3, np.nan, np.float32))
    assert all_nan.max_ulps == float("inf")


def test_empty_and_zero_outputs():
    empty = compare_arrays(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert (empty.max_abs, empty.max_ulps, empty.cosine) == (0.0, 0.0, 1.0)
    zeros = compare_arrays(np.zeros(5, np.float32), np.zeros(5, np.float32))
    assert zeros.cosine == 1.0 and zeros.snr_db == float("inf")
    assert compare_arrays(np.zeros(2), np.ones(2)).snr_db == float("-inf")


def test_top1_counts_rows_over_all_feeds():
    ref = [np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), np.array([[0.6, 0.4]], np.float32)]
    cand = [np.array([[0.9, 0.1], [0.7, 0.3]], np.float32), np.array([[0.1, 0.9]], np.float32)]
    got = compare_outputs([{"y": r} for r in ref], [{"y": c} for c in cand])["y"]
    assert got.top1 == pytest.approx(1 / 3)
    assert got.cosine == pytest.approx(_reference_metrics(np.concatenate(ref), np.concatenate(cand))["cosine"])


def test_integer_outputs_and_shape_changes():
    ids = np.array([1, 2, 3])
    assert compare_arrays(ids, ids).cosine == 1.0
    assert compare_arrays(ids, ids + 2).max_abs == 2.0
    assert not compare_outputs([{"y": ids}], [{"y": ids[:2]}])["y"].shape_match


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_top1_dist_only_on_probability_outputs():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    flipped = logits.copy()
    flipped[0, [np.argmax(logits[0]), np.argmin(logits[0])]] = flipped[0, [np.argmin(logits[0]), np.argmax(logits[0])]]
    probs = compare_outputs([{"p": _softmax(logits)}], [{"p": _softmax(flipped)}])["p"]
    assert probs.top1 == probs.top1_dist == pytest.approx(5 / 6)
    embedding = compare_outputs([{"e": logits}], [{"e": flipped}])["e"]  # not a distribution
    assert embedding.top1 == pytest.approx(5 / 6) and embedding.top1_dist is None
    steps = rng.normal(size=(2, 10, 7)).astype(np.float32)
    changed = steps.copy()
    changed[1, 3] = -changed[1, 3]  # one time step's argmax moves
    ctc = compare_outputs([{"y": _softmax(steps)}], [{"y": _softmax(changed)}])["y"]
    assert ctc.top1_dist == pytest.approx(19 / 20) and ctc.cosine > 0.9


def test_default_budget_sees_a_changed_time_step_that_cosine_misses():
    from graphopt.tolerance import DEFAULT_BUDGET

    steps = np.zeros((4, 50, 30), np.float32)
    steps[..., 0] = 8.0  # blank dominates every step, as in a CTC recognizer
    changed = steps.copy()
    changed[2, 17, 5] = 8.5  # one character appears (narrowly: the budget's cosine is per sample)
    metrics = compare_outputs([{"y": _softmax(steps)}], [{"y": _softmax(changed)}])
    assert metrics["y"].cosine > metrics["y"].sample_cosine > 0.99
    assert DEFAULT_BUDGET.violations(metrics) == ["y: top1_dist 0.995 vs budget 0.999"]


def test_worst_sample_cosine_sees_one_bad_sample_among_many():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(32, 64)).astype(np.float32)
    cand = ref.copy()
    cand[5] = -cand[5] * 0.2 + rng.normal(size=64).astype(np.float32)  # one sample ruined
    got = compare_outputs([{"e": ref}], [{"e": cand}])["e"]
    assert got.cosine > 0.9 and got.sample_cosine < 0.0 and got.samples == 32
    assert got.sample_snr_db < got.snr_db
    fine = compare_outputs([{"e": ref}], [{"e": ref * 1.001}])["e"]
    assert fine.sample_cosine == pytest.approx(1.0) and fine.sample_snr_db == pytest.approx(60, abs=0.1)


def test_samples_of_a_time_major_output_are_on_axis_1():
    from graphopt.output_kinds import infer_kinds

    ref = np.ones((10, 3, 4), np.float32)  # [T, N, C]
    cand = ref.copy()
    cand[:, 1] = -1.0  # sample 1 flipped at every step
    feeds = [{"x": np.zeros((3, 8), np.float32)}]
    kinds = infer_kinds([{"y": ref}], feeds)
    got = compare_outputs([{"y": ref}], [{"y": cand}], kinds)["y"]
    assert got.samples == 3 and got.sample_cosine == pytest.approx(-1.0)
    assert compare_outputs([{"y": ref}], [{"y": cand}])["y"].samples == 10  # no feeds: axis 0


def test_per_position_top1_on_logits_not_only_on_probabilities():
    rng = np.random.default_rng(4)
    logits = rng.normal(-8, 2, (3, 20, 30)).astype(np.float32)
    winners = rng.integers(0, 30, (3, 20))
    np.put_along_axis(logits, winners[..., None], 12.0, axis=-1)
    changed = logits.copy()
    changed[1, 4, winners[1, 4]] = -12.0  # one position's class changes
    got = compare_outputs([{"y": logits}], [{"y": changed}])["y"]
    assert got.top1 == got.top1_dist == pytest.approx(59 / 60) and got.positions == 60
    assert got.sample_top1 == pytest.approx(19 / 20) and got.cosine > 0.99
    assert "logits" in got.kind


def test_empty_outputs_agree_and_nan_candidates_fail():
    from graphopt.tolerance import Budget

    empty = compare_outputs([{"p": np.zeros((0, 4), np.float32)}], [{"p": np.zeros((0, 4), np.float32)}])["p"]
    assert empty.sample_cosine == 1.0 and empty.samples == 0
    ref = np.ones((2, 4), np.float32)
    bad = ref.copy()
    bad[1, 2] = np.nan
    got = compare_outputs([{"y": ref}], [{"y": bad}])
    assert got["y"].sample_cosine == -1.0 and got["y"].sample_snr_db == float("-inf")
    assert Budget({"max_abs": 1.0}).violations(got)  # NaN misses a budget, it does not pass it
