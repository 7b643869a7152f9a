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
