"""Block-wise weight quantization: scales, zero points, round-to-nearest, and the packed layouts.

A weight is handled as a matrix W [K, N] whose axis 0 is the reduction axis (MatMul's B; an
embedding table [V, D] is passed as its transpose, D being the axis its rows are quantized along).
Axis 0 is cut into blocks of B consecutive rows (the last one partial when B does not divide K);
block j of column n has its own scale s and, asymmetric, zero point z:
    q = clip(round_half_even(w / s) + z, qmin, qmax),    ŵ = (q - z) · s
- symmetric, b bits: q in [-2^(b-1), 2^(b-1) - 1], z = 0, s = r · max|w| / (2^(b-1) - 1);
- asymmetric: q in [0, 2^b - 1], the block's [min, max] shrunk about its centre by r gives
  lo, hi; s = (hi - lo) / (2^b - 1), z = clip(round(-lo / s), 0, 2^b - 1).
r = 1 is plain min/max; with `search`, r is picked per block from RATIOS as the one with the
smallest Σ_k d_k (w_k - ŵ_k)², d = `importance` (1 by default; the layer input's E[x_k²] for
activation-aware callers). A zero block gets s = 1 (q = z, ŵ = 0 exactly).

Layouts (the codes stored unsigned: symmetric q + 2^(b-1), which is the kernels' default zero point):
- com.microsoft MatMulNBits: B uint8 [N, ceil(K/B), B·b/8], column n's block j packed low nibble
  first; K is padded to a multiple of B (the padding's codes are the zero point and the node's
  `K` attribute keeps the true size); scales float [N, ceil(K/B)]; zero points uint8
  [N, ceil(ceil(K/B)·b/8)], two 4-bit values per byte, low nibble first.
- com.microsoft GatherBlockQuantized (uint8 data, `bits`): the table's rows packed the same way
  along D; scales [V, ceil(D/B)], zero points packed per row like MatMulNBits'.
- ONNX INT4/UINT4 tensors: the elements in row-major order, two per byte, low nibble first
  (`pack_nibbles` of the flattened codes); DequantizeLinear with `block_size` takes scales with
  ceil(K/B) blocks, so a partial last block needs no padding there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


@dataclass(frozen=True)
class BlockFormat:
    bits: int
    block_size: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def offset(self) -> int:
        """What turns a stored code unsigned (the kernels' default zero point when symmetric)."""
        return 2 ** (self.bits - 1) if self.symmetric else 0

    def blocks(self, rows: int) -> int:
        return -(-rows // self.block_size)


@dataclass(frozen=True)
class BlockQuantized:
    """Codes q [K, N] (int8 symmetric, uint8 asymmetric), scales [kb, N], zero points [kb, N] or None."""

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    fmt: BlockFormat

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self.scales, self.zero_points, self.fmt.block_size)

    def unsigned_codes(self) -> np.ndarray:
        return (self.q.astype(np.int16) + self.fmt.offset).astype(np.uint8)

    def unsigned_zero_points(self) -> np.ndarray:
        if self.zero_points is None:
            return np.full(self.scales.shape, self.fmt.offset, np.uint8)
        return self.zero_points.astype(np.uint8)


def expand_blocks(values: np.ndarray, block_size: int, rows: int) -> np.ndarray:
    """[kb, N] per-block values repeated to [rows, N]."""
    return np.repeat(values, block_size, axis=0)[:rows]


def dequantize(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, block_size: int) -> np.ndarray:
    rows = q.shape[0]
    codes = q.astype(np.float32)
    if zero_points is not None:
        codes = codes - expand_blocks(zero_points.astype(np.float32), block_size, rows)
    return codes * expand_blocks(scales, block_size, rows)


def blocked(w: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] -> [kb, B, N], the last block padded by repeating its last row (the padding does
    not move any block's min, max or error ranking)."""
    rows = w.shape[0]
    kb = -(-rows // block_size)
    if kb * block_size != rows:
        w = np.concatenate([w, np.repeat(w[-1:], kb * block_size - rows, axis=0)])
    return w.reshape(kb, block_size, w.shape[1])


def block_params(blocks: np.ndarray, fmt: BlockFormat, ratio) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales [kb, N] (and zero points) of `blocks` [kb, B, N] with clipping ratio r (scalar or [kb, N])."""
    if fmt.symmetric:
        amax = np.abs(blocks).max(axis=1) * ratio
        scales = amax / fmt.qmax
        return np.where(scales > 0, scales, 1.0).astype(np.float32), None
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    centre, half = (hi + lo) / 2, (hi - lo) / 2 * ratio
    lo, hi = centre - half, centre + half
    scales = np.where(hi > lo, (hi - lo) / (fmt.qmax - fmt.qmin), 1.0).astype(np.float32)
    zeros = np.clip(np.round(-lo / scales), fmt.qmin, fmt.qmax)
    return scales, zeros.astype(np.uint8)


def block_codes(blocks: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, fmt: BlockFormat) -> np.ndarray:
    """Integer codes [kb, B, N] (int16) of `blocks` under the given parameters."""
    shifted = np.round(blocks / scales[:, None, :])
    if zeros is not None:
        shifted = shifted + zeros[:, None, :]
    return np.clip(shifted, fmt.qmin, fmt.qmax).astype(np.int16)


def _block_error(blocks, codes, scales, zeros, importance) -> np.ndarray:
    values = codes.astype(np.float32) if zeros is None else codes - zeros[:, None, :].astype(np.float32)
    err = (blocks - values * scales[:, None, :]) ** 2
    if importance is not None:
        err = err * importance[:, :, None]
    return err.sum(axis=1)


def quantize_rtn(w: np.ndarray, fmt: BlockFormat, search: bool = True,
                 importance: np.ndarray | None = None) -> BlockQuantized:
    """Round-to-nearest block quantization of `w` [K, N] along axis 0 (see the module docstring)."""
    w = np.nan_to_num(np.asarray(w, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    rows = w.shape[0]
    blocks = blocked(w, fmt.block_size)
    weight = None if importance is None else blocked(np.asarray(importance, np.float32)[:, None],
                                                      fmt.block_size)[:, :, 0]
    best = None
    for ratio in (RATIOS if search else RATIOS[:1]):
        scales, zeros = block_params(blocks, fmt, ratio)
        codes = block_codes(blocks, scales, zeros, fmt)
        if not search:
            best = (scales, zeros, codes)
            break
        err = _block_error(blocks, codes, scales, zeros, weight)
        if best is None:
            best = (scales, zeros, codes, err)
            continue
        better = err < best[3]
        keep = better[:, None, :]
        best = (np.where(better, scales, best[0]), None if zeros is None else np.where(better, zeros, best[1]),
                np.where(keep, codes, best[2]), np.minimum(err, best[3]))
    scales, zeros, codes = best[:3]
    dtype = np.int8 if fmt.symmetric else np.uint8
    q = codes.reshape(-1, w.shape[1])[:rows].astype(dtype)
    return BlockQuantized(q, scales.astype(np.float32), zeros, fmt)


# --- packing ---------------------------------------------------------------------------------

def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit values along the last axis, two per byte, low nibble first (odd counts padded with 0)."""
    codes = np.asarray(codes).astype(np.uint8) & 0x0F
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The inverse of `pack_nibbles`: [..., count] uint8 values in [0, 15]."""
    packed = np.asarray(packed, np.uint8)
    out = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :count]


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes along the last axis as bytes: packed nibbles for 4 bits, as they are for 8."""
    return pack_nibbles(codes) if bits == 4 else np.asarray(codes, np.uint8)


@dataclass(frozen=True)
class NBitsArrays:
    """MatMulNBits' B, scales and (asymmetric) zero points, and the attributes they go with."""

    b: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int


def matmulnbits_arrays(bq: BlockQuantized) -> NBitsArrays:
    fmt, (k, n) = bq.fmt, bq.q.shape
    kb = fmt.blocks(k)
    codes = bq.unsigned_codes()
    padded = np.full((kb * fmt.block_size, n), fmt.offset if bq.zero_points is None else 0, np.uint8)
    padded[:k] = codes
    if bq.zero_points is not None:  # the padding decodes to 0: its code is the block's zero point
        padded[k:] = bq.zero_points[-1]
    per_column = padded.T.reshape(n, kb, fmt.block_size)
    zeros = None if bq.zero_points is None else pack_codes(bq.unsigned_zero_points().T, fmt.bits)
    return NBitsArrays(pack_codes(per_column, fmt.bits), np.ascontiguousarray(bq.scales.T), zeros, k, n)


def gather_arrays(bq: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GatherBlockQuantized's uint8 data [V, D·b/8], scales [V, kb], zero points, from the
    quantized transpose ([D, V]) of a table [V, D]."""
    data = pack_codes(bq.unsigned_codes().T, bq.fmt.bits)
    zeros = None if bq.zero_points is None else pack_codes(bq.unsigned_zero_points().T, bq.fmt.bits)
    return np.ascontiguousarray(data), np.ascontiguousarray(bq.scales.T), zeros


def onnx_int_array(codes: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """The bytes of an ONNX INT4/UINT4 tensor (`pack_nibbles` of the row-major codes) or the
    INT8/UINT8 codes themselves."""
    if bits == 8:
        return np.ascontiguousarray(codes, np.int8 if signed else np.uint8)
    return pack_nibbles(np.ascontiguousarray(codes).reshape(-1))


def onnx_int_tensor_of(array: np.ndarray, bits: int, signed: bool, shape: tuple[int, ...],
                       name: str = "") -> ir.TensorProtocol:
    """A tensor over `onnx_int_array`'s bytes (no copy)."""
    if bits == 8:
        return ir.Tensor(array, name=name)
    dtype = ir.DataType.INT4 if signed else ir.DataType.UINT4
    return ir.PackedTensor(array, dtype, shape=ir.Shape(shape), name=name)


def onnx_int_tensor(codes: np.ndarray, bits: int, signed: bool, name: str) -> ir.TensorProtocol:
    """An ONNX INT4/UINT4 (packed) or INT8/UINT8 tensor of `codes`."""
    return onnx_int_tensor_of(onnx_int_array(codes, bits, signed), bits, signed, codes.shape, name)


def weight_error(w: np.ndarray, approx: np.ndarray) -> dict[str, float]:
    """Relative Frobenius error and SQNR (dB) of a quantized weight."""
    signal = float(np.sum(np.square(w, dtype=np.float64)))
    noise = float(np.sum(np.square(w.astype(np.float64) - approx)))
    rel = float(np.sqrt(noise / signal)) if signal > 0 else 0.0
    sqnr = float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else float("inf")
    return {"rel_error": round(rel, 6), "sqnr_db": round(sqnr, 3)}
