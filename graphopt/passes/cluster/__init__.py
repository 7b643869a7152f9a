"""Weight clustering (Deep Compression's weight sharing): options, layers, dp (exact 1-D k-means),
kmeans (palettes, Lloyd), graph (packed codes and the expansion ONNX Runtime folds), build,
budget, report, and the pass (cluster)."""

from graphopt.passes.cluster.cluster import ClusterWeights
from graphopt.passes.cluster.options import ClusterOptions

__all__ = ["ClusterOptions", "ClusterWeights"]
