"""A zero initial state of LSTM / GRU / RNN is the absent one.

The ONNX spec of LSTM, GRU and RNN: initial_h (input 5) and, for LSTM, initial_c (input 6) are
optional, "if not specified - assumed to be 0". Exporters often build that zero at run time
(Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape, to match the batch size). Where the
state is provably +0 everywhere (a ConstantOfShape whose value is 0 or absent, or a zero
constant) and provably of the state's shape ([directions, batch, hidden], or [batch, directions,
hidden] with layout=1, batch read from X), the input becomes '' (absent) and the chain that
built it is left dead. -0.0 is not accepted (a -0 state could give -0 where +0 gives +0).
ONNX Runtime's `com.microsoft::DynamicQuantizeLSTM` (what ORT's dynamic quantizer writes for an
LSTM) takes the same optional states at the same positions, with the same default.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from graphopt.passes.fusion.shape_rules import SymbolicRule
from graphopt.passes.fusion.symbolic import ShapeEval, const, const_array, dims_text, same

STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,), "DynamicQuantizeLSTM": (5, 6)}
STATE_NAMES = {5: "initial_h", 6: "initial_c"}
OUTPUTS = {"LSTM": 3, "GRU": 2, "RNN": 2, "DynamicQuantizeLSTM": 3}  # Y, Y_h (, Y_c)
DOMAINS = {"DynamicQuantizeLSTM": "com.microsoft"}  # the others: the default domain


def _is_positive_zero(array: np.ndarray) -> bool:
    if array.dtype.kind == "f":
        return bool(np.all(array == 0) and not np.any(np.signbit(array)))
    return bool(np.all(array == 0))


def zero_state_refusal(value: ir.Value) -> Optional[str]:
    """Why `value` is not provably +0 everywhere (None: it is)."""
    array = const_array(value)
    if array is not None:
        return None if _is_positive_zero(array) else "a constant that is not all +0"
    node = value.producer()
    if node is None or node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return "neither a constant nor a ConstantOfShape"
    fill = node.attributes.get("value")
    if fill is not None and not _is_positive_zero(fill.as_tensor().numpy()):
        return "a ConstantOfShape whose value is not +0"
    return None


def state_shape_refusal(ev: ShapeEval, node: ir.Node, state: ir.Value) -> Optional[str]:
    """Why `state` is not provably of the shape the op expects (None: it is)."""
    x, have = ev.dims(node.inputs[0]), ev.dims(state)
    hidden = node.attributes.get_int("hidden_size", 0)
    if x is None or len(x) != 3 or hidden <= 0:
        return "X's rank or hidden_size unknown"
    directions = const(2 if node.attributes.get_string("direction", "forward") == "bidirectional" else 1)
    layout = node.attributes.get_int("layout", 0)
    want = [x[0], directions, const(hidden)] if layout else [directions, x[1], const(hidden)]
    if have is None or len(have) != len(want) or not all(same(a, b) for a, b in zip(have, want)):
        return f"its shape {dims_text(ev, have)} is not provably {dims_text(ev, want)}"
    return None


class ZeroRecurrentState(SymbolicRule):
    """LSTM/GRU/RNN with a provably zero initial state of the right shape: the state input is dropped."""

    def __init__(self, op_type: str, outputs: int):
        super().__init__(name=f"{op_type}_zero_state_{outputs}")
        self._op_type, self._outputs = op_type, outputs

    def pattern(self, op, x):
        return getattr(op, self._op_type)(x, _allow_other_inputs=True, _allow_other_attributes=True,
                                          _outputs=self._outputs, _domain=DOMAINS.get(self._op_type, ""))

    def check(self, context, x, **_) -> MatchResult:
        result = MatchResult()
        node = context.root
        if len(node.outputs) != self._outputs:
            return result.fail(f"the node has {len(node.outputs)} outputs")
        ev, drop, reasons = self.evaluator(), [], []
        for index in STATE_INPUTS[self._op_type]:
            state = node.inputs[index] if len(node.inputs) > index else None
            if state is None:
                continue
            reason = zero_state_refusal(state) or state_shape_refusal(ev, node, state)
            if reason:
                reasons.append(f"{STATE_NAMES[index]} is {reason}")
            else:
                drop.append(index)
        if not drop:
            return result.fail("; ".join(reasons) or "no initial state given")
        inputs = [None if i in drop else v for i, v in enumerate(node.inputs)]
        while inputs and inputs[-1] is None:
            inputs.pop()
        self._inputs = inputs
        self._attributes = {name: attr for name, attr in node.attributes.items()}
        return result

    def rewrite(self, op, x, **_):
        return getattr(op, self._op_type)(*self._inputs, **self._attributes, _outputs=self._outputs,
                                          _domain=DOMAINS.get(self._op_type, ""))


def zero_state_rules() -> dict:
    """{"lstm_zero_state": [...], ...}: one rule per output count (a node's outputs are replaced
    all together: Y, Y_h (, Y_c)), most outputs first."""
    return {f"{op_type.lower()}_zero_state": [ZeroRecurrentState.rule(op_type, n) for n in range(most, 0, -1)]
            for op_type, most in OUTPUTS.items()}
