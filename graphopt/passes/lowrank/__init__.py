"""Low-rank factorization: SVD of MatMul/Gemm weights and Tucker-2 of Conv kernels."""

from graphopt.passes.lowrank.svd import SvdPass
from graphopt.passes.lowrank.tucker import TuckerPass

__all__ = ["SvdPass", "TuckerPass"]
