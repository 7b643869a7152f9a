"""ORT contrib fusions (target `ort`): what the wrapper adds around onnxscript's optimize_for_ort."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from conftest import parse
from graphopt import optimize
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from models.zoo import LIGHT_DIR


def test_cleanup_inside_optimize_for_ort_counts_as_a_change(tmp_path):
    """optimize_for_ort drops IR-3 initializer inputs without counting a fusion; the pass said
    "no change" and the saved file failed the checker (IR 3 needs initializers as inputs)."""
    out = tmp_path / "o.onnx"
    result = optimize(LIGHT_DIR / "light_squeezenet.onnx", out, passes="ort-fusions")
    record = result.report["passes"][0]
    assert record["applied"] and record["stats"]["ir_version"].startswith("3 -> 4")
    onnx.checker.check_model(str(out), full_check=True)


def test_sequence_ops_below_opset_13_are_refused():
    model = ir.serde.deserialize_model(parse("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[2, 3] x, float[2, 3] y) => (float[2, 3, 2] out) {
        seq = SequenceConstruct(x, y)
        out = ConcatFromSequence <axis = -1, new_axis = 1> (seq)
    }
    """))
    result = get_pass("ort-fusions")().run(model, PassContext())
    assert not result.modified and "ConcatFromSequence at opset 12" in result.stats["skipped"]
