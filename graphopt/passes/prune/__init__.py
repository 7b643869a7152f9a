"""Pruning: unstructured magnitude, N:M, and structured channel pruning (channels/)."""

from graphopt.passes.prune.channels import PruneChannels
from graphopt.passes.prune.nm import PruneNM
from graphopt.passes.prune.unstructured import Prune

__all__ = ["Prune", "PruneChannels", "PruneNM"]
