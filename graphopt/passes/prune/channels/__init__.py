"""Structured channel pruning: dependency groups (groups, dims, ops, shapes), importance, rewrite."""

from graphopt.passes.prune.channels.structured import PruneChannels

__all__ = ["PruneChannels"]
