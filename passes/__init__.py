"""graphopt's pass library; importing it registers every pass by name."""

from graphopt.passes import cleanup, folding, fusion, normalization, opset, ort_fusions  # noqa: F401
