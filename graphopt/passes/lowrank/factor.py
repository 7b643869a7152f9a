"""Low-rank factorization math shared by the `svd` and `tucker` passes (numpy, float64).

Plain truncated SVD. A weight W (K x N, y = x W) is factored as W = U Σ Vᵀ and truncated to
rank r: W ≈ A B with A = U_r Σ_r^½ (K x r), B = Σ_r^½ V_rᵀ (r x N) (the singular values are
split evenly so neither factor's range dwarfs the other's). Eckart–Young: this minimizes the
weight error ‖W − A B‖_F, and the relative error is √(Σ_{i>r} σᵢ² / Σ σᵢ²).

Data-aware (whitened) SVD. What matters is the layer's output error on real inputs,
‖X (W − Ŵ)‖_F² = tr((W − Ŵ)ᵀ C (W − Ŵ)) with C = XᵀX / n the second-moment matrix of the
layer's input rows (accumulated over the calibration data in float64). With S = C^½ (symmetric
square root from eigh, C = Q Λ Qᵀ, S = Q Λ^½ Qᵀ) this is ‖S (W − Ŵ)‖_F², so the best rank-r Ŵ
is S⁻¹ [S W]_r: factor S W = U Σ Vᵀ, keep r terms, un-whiten: A = S⁻¹ U_r Σ_r^½, B = Σ_r^½ V_rᵀ.
C is often singular (dead or collinear features), so S is built from C + λ I with
λ = damping · tr(C) / K (damping = 0.01 by default: it bounds ‖S⁻¹‖ by 10 / √(mean eigenvalue)
and costs a relative output error of about √damping only on directions the data never excites).
The relative output error of rank r is then √(Σ_{i>r} σᵢ² / Σ σᵢ²) of S W's singular values
(exact on the calibration rows up to λ), and "energy" counts those σ² — output energy kept.

Tucker-2 of a convolution weight W [Cout, Cin, kh, kw]: W ≈ G ×₀ U_out ×₁ U_in with
U_out (Cout x r_out), U_in (Cin x r_in) orthonormal and the core G = W ×₀ U_outᵀ ×₁ U_inᵀ
[r_out, r_in, kh, kw]; as layers: 1x1 conv (weight U_inᵀ) → kh x kw conv (G, the original
strides/pads/dilations) → 1x1 conv (U_out, the bias). Ranks come from HOSVD (the mode
unfoldings' singular values), refined by a few HOOI sweeps (alternating: U_out = top singular
vectors of (W ×₁ U_inᵀ)₍₀₎ and vice versa). Since both factors are orthonormal projections,
‖W − Ŵ‖² = ‖W‖² − ‖G‖². The data-aware variant whitens the input-channel mode with the
channel second moment (pixels as rows; exact for 1x1 kernels, ignores spatial correlation
for larger ones): factor W̃ = W ×₁ S, then U_in = S⁻¹ Ũ_in (not orthonormal; the first 1x1
conv computes U_inᵀ x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_DAMPING = 0.01


class SecondMoment:
    """Running Σ xxᵀ over rows x (float64), one matrix per layer input; nothing else is kept."""

    def __init__(self, features: int):
        self.sum = np.zeros((features, features), dtype=np.float64)
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        """`rows` is [n, features]; non-finite rows are dropped (they would poison the sum)."""
        rows = rows.astype(np.float64, copy=False)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            rows = rows[finite]
        self.sum += rows.T @ rows
        self.rows += rows.shape[0]

    def matrix(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)


def rows_of(x: np.ndarray, channel_axis: int) -> np.ndarray:
    """The feature vectors of an activation as rows: [..., K] (axis -1) or [N, C, H, W] (axis 1)."""
    if channel_axis not in (-1, x.ndim - 1):
        x = np.moveaxis(x, channel_axis, -1)
    return x.reshape(-1, x.shape[-1])


@dataclass(frozen=True)
class Whitening:
    """S = (C + λI)^½ and S⁻¹, from one eigendecomposition."""

    s: np.ndarray
    s_inv: np.ndarray

    @classmethod
    def of(cls, moment: np.ndarray, damping: float = DEFAULT_DAMPING) -> Whitening:
        k = moment.shape[0]
        lam = damping * float(np.trace(moment)) / k
        if not lam > 0:  # an all-zero input: nothing to weigh by
            lam = 1.0
        values, vectors = np.linalg.eigh((moment + moment.T) / 2 + lam * np.eye(k))
        values = np.maximum(values, lam)
        return cls((vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T)


@dataclass(frozen=True)
class LowRank:
    """W ≈ A B for every rank at once: `u` is already un-whitened (S⁻¹ U), `s` the spectrum of
    the matrix that was factored (S W when whitened, W otherwise)."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    whitened: bool

    @property
    def max_rank(self) -> int:
        return int(self.s.size)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]

    def approximation(self, rank: int) -> np.ndarray:
        a, b = self.factors(rank)
        return a @ b

    def residual(self, rank: int) -> float:
        """Relative error of rank `rank` in the factored space (output space when whitened)."""
        return spectrum_residual(self.s, rank)

    def energy_rank(self, energy: float) -> int:
        return energy_rank(self.s, energy)


def factorize(weight: np.ndarray, whitening: Whitening | None = None) -> LowRank:
    """Truncatable SVD of `weight` (K x N); whitened by `whitening` when given."""
    w = weight.astype(np.float64)
    target = whitening.s @ w if whitening is not None else w
    u, s, vt = np.linalg.svd(target, full_matrices=False)
    if whitening is not None:
        u = whitening.s_inv @ u
    return LowRank(u, s, vt, whitening is not None)


def spectrum_residual(s: np.ndarray, rank: int) -> float:
    total = float(np.sum(s**2))
    return float(np.sqrt(np.sum(s[rank:] ** 2) / total)) if total > 0 else 0.0


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest r with Σ_{i<r} σᵢ² ≥ energy · Σ σᵢ² (at least 1)."""
    total = float(np.sum(s**2))
    if total == 0:
        return 1
    kept = np.cumsum(s**2) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, s.size))


def relative_errors(weight: np.ndarray, approx: np.ndarray, moment: np.ndarray | None) -> dict[str, float]:
    """‖W − Ŵ‖/‖W‖ and, given C, the output error √(tr(EᵀCE) / tr(WᵀCW)) on those rows."""
    w = weight.astype(np.float64)
    err = w - approx
    out = {"weight": _ratio(np.sum(err**2), np.sum(w**2))}
    if moment is not None:
        out["output"] = _ratio(np.sum(err * (moment @ err)), np.sum(w * (moment @ w)))
    return out


def _ratio(num: float, den: float) -> float:
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def break_even_rank(k: int, n: int) -> float:
    """K·N/(K+N): a rank at or above it costs as many MACs as the dense product."""
    return k * n / (k + n)


# --- Tucker-2 ----------------------------------------------------------------------

@dataclass(frozen=True)
class Tucker2:
    """W [Cout, Cin, kh, kw] ≈ core ×₀ u_out ×₁ u_in (u_in un-whitened when data-aware)."""

    u_out: np.ndarray  # Cout x r_out
    u_in: np.ndarray  # Cin x r_in
    core: np.ndarray  # [r_out, r_in, kh, kw]
    residual: float  # relative error in the factored (possibly whitened) space

    def layer_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights of the 1x1 → kh x kw → 1x1 convolutions."""
        first = self.u_in.T[:, :, None, None]
        last = self.u_out[:, :, None, None]
        return first, self.core, last

    def approximation(self) -> np.ndarray:
        return np.einsum("abhw,oa,ib->oihw", self.core, self.u_out, self.u_in)


def mode_spectra(weight: np.ndarray, whitening: Whitening | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the output-channel and input-channel unfoldings (HOSVD ranks)."""
    w = _whiten_input_mode(weight.astype(np.float64), whitening)
    s_out = np.linalg.svd(_unfold(w, 0), compute_uv=False)
    s_in = np.linalg.svd(_unfold(w, 1), compute_uv=False)
    return s_out, s_in


def tucker2(weight: np.ndarray, r_out: int, r_in: int, whitening: Whitening | None = None,
            sweeps: int = 3) -> Tucker2:
    """Tucker-2 with ranks (r_out, r_in): HOSVD start, `sweeps` HOOI refinements."""
    w = _whiten_input_mode(weight.astype(np.float64), whitening)
    u_in = _leading(_unfold(w, 1), r_in)
    u_out = _leading(_unfold(w, 0), r_out)
    for _ in range(sweeps):
        u_out = _leading(_unfold(np.einsum("oihw,ib->obhw", w, u_in), 0), r_out)
        u_in = _leading(_unfold(np.einsum("oihw,oa->aihw", w, u_out), 1), r_in)
    core = np.einsum("oihw,oa,ib->abhw", w, u_out, u_in)
    residual = _ratio(np.sum(w**2) - np.sum(core**2), np.sum(w**2))
    if whitening is not None:
        u_in = whitening.s_inv @ u_in
    return Tucker2(u_out, u_in, core, residual)


def _whiten_input_mode(w: np.ndarray, whitening: Whitening | None) -> np.ndarray:
    return w if whitening is None else np.einsum("oihw,ij->ojhw", w, whitening.s)


def _unfold(w: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def _leading(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, _, _ = np.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank]
