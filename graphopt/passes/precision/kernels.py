"""Which converted ops ONNX Runtime's CPU provider runs natively in the low type.

The kernel registry of the installed ONNX Runtime is read through its compiled module
(`graphopt.upstream.ort_kernel_definitions`, the call ORT's own tools use to list kernels): a kernel counts when it is the CPU provider's, its version range holds the
schema version the node resolves to, and one of its type constraints allows the low type.
With ORT 1.32 the CPU provider registers float16 for few compute ops (LayerNormalization,
Clip, Max/Min, Round, Sign, Celu, Attention and the data-movement ops: Transpose, Reshape,
Concat, Gather, Slice, ...), not for MatMul, Conv, Add, Mul, Relu or Softmax. For a float16 node
without a kernel, ORT inserts its own Casts around it when the session is built (it computes in
float32, rounding the result to float16; between two such ops it drops the Cast pair, so the value
stays float32, measured: (0.3 + 1000) - 1000 in a float16 chain gives 0.29999 there, 0.5 on a
device rounding each result), so the model runs, with Cast overhead. For bfloat16
it inserts none: a bfloat16 node without a CPU kernel makes the model fail to load
("Could not find an implementation for MatMul(13)"), and such a model can only be verified
where a provider has those kernels.
"""

from __future__ import annotations

import functools
from collections import Counter

import onnx_ir as ir

from graphopt.upstream import ort_kernel_definitions

CPU = "CPUExecutionProvider"
CAST_NOTE = ("ORT CPU computes the ops without a float16 kernel in float32 and drops the Cast pairs between "
             "consecutive ones: verified here, the error is that of the float16 weights, inputs and float16-kernel "
             "results, not of float16 arithmetic between every op (a float16 GPU kernel rounds each result)")
Table = dict[tuple[str, str], list[tuple[int, int, frozenset[str]]]]


@functools.lru_cache(maxsize=1)
def cpu_kernels() -> Table | None:
    """(domain, op) -> [(first version, last version, allowed types)], or None if unreadable."""
    try:
        definitions = ort_kernel_definitions()
    except Exception:  # noqa: BLE001  (a build without the call)
        return None
    table: Table = {}
    for d in definitions:
        if d.provider != CPU:
            continue
        types = frozenset(t for allowed in d.type_constraints.values() for t in allowed)
        first, last = d.version_range
        table.setdefault((d.domain, d.op_name), []).append((first, last, types))
    return table


def has_cpu_kernel(op: str, domain: str, since_version: int, low_name: str) -> bool | None:
    """Whether ORT's CPU provider has a `low_name` kernel for the op at that schema version."""
    table = cpu_kernels()
    if table is None:
        return None
    domain = "" if domain == "ai.onnx" else domain
    wanted = f"tensor({low_name})"
    return any(first <= since_version <= last and wanted in types
               for first, last, types in table.get((domain, op), []))


def cpu_report(nodes: dict[str, ir.Node], chosen: dict, low_name: str) -> dict:
    """Converted ops by whether ORT CPU has a `low_name` kernel for them."""
    native, missing, unknown = Counter(), Counter(), Counter()
    for key, slots in chosen.items():
        node = nodes[key]
        found = has_cpu_kernel(node.op_type, node.domain, slots.since_version, low_name)
        (unknown if found is None else native if found else missing)[node.op_type] += 1
    if unknown:
        return {"kernels": "unknown (this onnxruntime does not list its kernels)", "ops": dict(sorted(unknown.items()))}
    label = "through_ort_casts" if low_name == "float16" else f"no_{low_name}_kernel"
    report = {f"native_{low_name}": dict(sorted(native.items())), label: dict(sorted(missing.items()))}
    if low_name == "float16" and missing:
        report["note"] = CAST_NOTE
    return report


__all__ = ["cpu_kernels", "cpu_report", "has_cpu_kernel"]
