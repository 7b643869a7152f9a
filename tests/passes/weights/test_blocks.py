"""Block-wise quantization math: packing round trips, RTN error bounds per block, the clipping
search, the MatMulNBits / GatherBlockQuantized / INT4 layouts against ONNX Runtime's kernels,
and GPTQ / AWQ lowering the layer output error on a synthetic layer with correlated inputs."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt.passes.weights.awq import search_scales
from graphopt.passes.weights.blocks import (BlockFormat, gather_arrays, matmulnbits_arrays, onnx_int_tensor,
                                            pack_nibbles, quantize_rtn, unpack_nibbles)
from graphopt.passes.weights.gptq import quantize_gptq
from graphopt.passes.weights.stats import InputMoments, output_error

RNG = np.random.default_rng(0)
FORMATS = [BlockFormat(bits, 32, sym) for bits in (4, 8) for sym in (True, False)]


def test_pack_nibbles_round_trips_and_puts_the_first_value_low():
    codes = RNG.integers(0, 16, (3, 7))
    packed = pack_nibbles(codes)
    assert packed.shape == (3, 4) and packed.dtype == np.uint8
    assert packed[0, 0] == (codes[0, 0] | (codes[0, 1] << 4))
    np.testing.assert_array_equal(unpack_nibbles(packed, 7), codes)


@pytest.mark.parametrize("signed", [True, False])
def test_int4_tensor_matches_onnx_ir_packing(signed):
    codes = RNG.integers(-8, 8, (5, 9)) if signed else RNG.integers(0, 16, (5, 9))
    tensor = onnx_int_tensor(codes, 4, signed, "w")
    reference = ir.tensor(codes.astype(ml_dtypes.int4 if signed else ml_dtypes.uint4))
    assert tensor.dtype == (ir.DataType.INT4 if signed else ir.DataType.UINT4)
    assert tensor.tobytes() == reference.tobytes()
    np.testing.assert_array_equal(tensor.numpy().astype(np.int16), codes)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("rows", [64, 80])
def test_rtn_error_is_at_most_half_a_step_per_block(fmt, rows):
    w = RNG.standard_normal((rows, 12)).astype(np.float32)
    bq = quantize_rtn(w, fmt, search=False)
    assert bq.q.shape == w.shape and bq.scales.shape == (fmt.blocks(rows), 12)
    assert bq.q.min() >= fmt.qmin and bq.q.max() <= fmt.qmax
    step = np.repeat(bq.scales, fmt.block_size, axis=0)[:rows]
    assert np.all(np.abs(w - bq.dequantize()) <= step / 2 + 1e-6)
    if fmt.symmetric:
        assert bq.zero_points is None
    else:
        assert bq.zero_points.dtype == np.uint8 and bq.zero_points.max() <= fmt.qmax


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_clipping_search_never_increases_a_blocks_error(fmt):
    w = RNG.standard_t(3, (96, 16)).astype(np.float32)  # heavy tails: clipping pays
    plain, searched = quantize_rtn(w, fmt, search=False), quantize_rtn(w, fmt, search=True)
    err = [np.square(w - b.dequantize()).reshape(3, 32, 16).sum(axis=1) for b in (plain, searched)]
    assert np.all(err[1] <= err[0] + 1e-9)
    if fmt.bits == 4:  # at 8 bits the steps are fine enough that clipping rarely pays
        assert err[1].sum() < err[0].sum()


def test_zero_block_decodes_to_zero():
    w = np.zeros((32, 3), np.float32)
    for fmt in FORMATS:
        np.testing.assert_array_equal(quantize_rtn(w, fmt).dequantize(), w)


def _ms_model(node: onnx.NodeProto, inputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_matmulnbits_layout_matches_the_kernel(fmt):
    k, n = 80, 24  # K not a multiple of the block: padded for MatMulNBits
    w = RNG.standard_normal((k, n)).astype(np.float32)
    bq = quantize_rtn(w, fmt)
    arrays = matmulnbits_arrays(bq)
    names = ["x", "B", "S"] + (["Z"] if arrays.zero_points is not None else [])
    inits = [numpy_helper.from_array(arrays.b, "B"), numpy_helper.from_array(arrays.scales, "S")]
    if arrays.zero_points is not None:
        inits.append(numpy_helper.from_array(arrays.zero_points, "Z"))
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=fmt.bits,
                            block_size=fmt.block_size)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    got = run_ort(_ms_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])], inits), {"x": x})[0]
    np.testing.assert_allclose(got, x @ bq.dequantize(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_gather_block_quantized_layout_matches_the_kernel(fmt):
    table = RNG.standard_normal((11, 72)).astype(np.float32)  # D = 72: a partial last block
    bq = quantize_rtn(table.T, fmt)
    data, scales, zeros = gather_arrays(bq)
    names = ["T", "i", "S"] + (["Z"] if zeros is not None else [])
    inits = [numpy_helper.from_array(data, "T"), numpy_helper.from_array(scales, "S")]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zeros, "Z"))
    node = helper.make_node("GatherBlockQuantized", names, ["y"], domain="com.microsoft", gather_axis=0,
                            quantize_axis=1, block_size=fmt.block_size, bits=fmt.bits)
    idx = np.array([[3, 0, 10], [5, 5, 1]], np.int64)
    got = run_ort(_ms_model(node, [helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3])], inits), {"i": idx})[0]
    np.testing.assert_allclose(got, bq.dequantize().T[idx], rtol=1e-6, atol=1e-6)


def _correlated_layer(k: int = 128, n: int = 64, rows: int = 3000):
    mix = RNG.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = (RNG.standard_normal((rows, k)) @ mix).astype(np.float32)
    x[:, :4] *= 8  # a few outlier channels, as transformer activations have
    moments = InputMoments(k)
    for chunk in np.array_split(x, 7):  # streamed in batches
        moments.add(chunk)
    moments.flush()
    return x, RNG.standard_normal((k, n)).astype(np.float32), moments


def test_streamed_moments_equal_the_full_products():
    x, _, moments = _correlated_layer(rows=500)
    np.testing.assert_allclose(moments.second_moment, x.T.astype(np.float64) @ x / len(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(moments.mean_abs, np.abs(x).mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_the_layer_output_error_against_rtn(symmetric):
    x, w, moments = _correlated_layer()
    fmt = BlockFormat(4, 32, symmetric)
    rtn = quantize_rtn(w, fmt)
    gptq = quantize_gptq(w, moments.second_moment, fmt)
    measured = [np.square(x @ w - x @ b.dequantize()).sum() for b in (rtn, gptq)]
    assert measured[1] < 0.5 * measured[0]
    # the H-based output error is the measured one, without the rows
    assert output_error(w, gptq.dequantize(), moments.second_moment)[0] == pytest.approx(
        measured[1] / np.square(x @ w).sum(), rel=1e-3)


def test_awq_scaling_lowers_the_output_error_and_keeps_float_exact():
    x, w, moments = _correlated_layer()
    fmt = BlockFormat(4, 32, False)
    choice = search_scales([w], moments.second_moment, moments.mean_abs, fmt)
    assert choice.alpha > 0 and choice.errors[choice.alpha] < choice.errors[0.0]
    s = choice.scales
    np.testing.assert_allclose((x / s) @ (w * s[:, None]), x @ w, rtol=1e-4, atol=1e-3)
    effective = quantize_rtn(w * s[:, None], fmt, search=False).dequantize() / s[:, None]
    plain = quantize_rtn(w, fmt, search=False).dequantize()
    assert np.square(x @ (w - effective)).sum() < np.square(x @ (w - plain)).sum()
