"""Channel importance within a group, and which channels to keep.

For a group with channels c = 0…C−1 (shared by every tied seed):
- l1 / l2: Σ over the group's producers of ‖W_p[c]‖₁ or ‖W_p[c]‖₂ (the output-channel slice),
  each producer's norms divided by their mean so producers of different scale weigh alike;
- bn: |γ_c| of the BatchNormalization(s) on the group's channels (run before `fuse-bn`;
  without a BN the group falls back to l2, with a note);
- activation: Σ over the group's consumers of σ_c·‖W_consumer[:, c]‖₂, the typical size of
  what channel c adds to the consumer's output; σ_c = the channel's standard deviation when
  bias compensation folds its mean away, else its RMS √E[x_c²] (from calibration data).

Selection keeps the K highest-importance channels, K = C − removed rounded up to a multiple
of lcm(round_to, blocks) (at least `min_channels`); a grouped Conv's g blocks each keep K/g.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.passes.prune.channels.dims import Piece
from graphopt.passes.prune.channels.groups import ChannelAnalysis, ChannelGroup
from graphopt.passes.prune.common import ChannelStats, const_array


def position_channels(pieces: tuple[Piece, ...], seeds: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(positions, channel index) of every position along a tracked axis owned by `seeds`."""
    positions, channels, pos = [], [], 0
    for p in pieces:
        if p.seed in seeds:
            chans = np.repeat(np.arange(p.start, p.stop), p.inner)
            positions.append(pos + np.arange(p.length))
            channels.append(chans)
        pos += p.length
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(positions), np.concatenate(channels)


def weight_norms(group: ChannelGroup, order: int) -> np.ndarray:
    total = np.zeros(group.channels)
    for seed in group.seeds:
        weight = const_array(seed.node.inputs[1]).astype(np.float64)
        rows = np.moveaxis(weight, seed.weight_axis, 0).reshape(weight.shape[seed.weight_axis], -1)
        norms = np.abs(rows).sum(axis=1) if order == 1 else np.sqrt(np.square(rows).sum(axis=1))
        total += norms / max(float(norms.mean()), 1e-30)
    return total


def bn_gammas(analysis: ChannelAnalysis, group: ChannelGroup) -> np.ndarray | None:
    seeds = {s.id for s in group.seeds}
    total, found = np.zeros(group.channels), False
    for site in analysis.group_sites(group):
        if site.kind == "const" and site.node.op_type == "BatchNormalization" and site.index == 1:
            positions, channels = position_channels(site.pieces, seeds)
            np.add.at(total, channels, np.abs(const_array(site.node.inputs[1]).astype(np.float64))[positions])
            found = True
    return total if found else None


def consumer_column_norms(site, weight: np.ndarray) -> np.ndarray:
    """‖W[:, p]‖₂ for every input position p of a consumer (grouped Convs: within its block)."""
    if site.kind == "grouped_in":
        groups = site.node.attributes.get_int("group", 1)
        per_block, out_block = weight.shape[1], weight.shape[0] // groups
        blocks = weight.reshape(groups, out_block, per_block, -1)
        return np.sqrt(np.square(blocks).sum(axis=(1, 3))).reshape(-1)
    moved = np.moveaxis(weight, site.axis, 0)
    return np.sqrt(np.square(moved.reshape(moved.shape[0], -1)).sum(axis=1))


def activation_importance(analysis: ChannelAnalysis, group: ChannelGroup, stats: dict[str, ChannelStats],
                          centered: bool) -> np.ndarray | None:
    seeds = {s.id for s in group.seeds}
    total, found = np.zeros(group.channels), False
    for site in analysis.group_sites(group):
        if site.kind not in ("weight_in", "grouped_in") or site.value.name not in stats:
            continue
        st = stats[site.value.name]
        spread = np.sqrt(st.variance if centered else st.second_moment)
        norms = consumer_column_norms(site, const_array(site.node.inputs[1]).astype(np.float64))
        positions, channels = position_channels(site.pieces, seeds)
        if spread.size != norms.size or (positions.size and positions.max() >= norms.size):
            continue
        np.add.at(total, channels, spread[positions] * norms[positions])
        found = True
    return total if found else None


def importance(analysis: ChannelAnalysis, group: ChannelGroup, kind: str, stats: dict,
               centered: bool) -> tuple[np.ndarray, str | None]:
    """Per-channel importance of the group, and a note when it fell back to l2."""
    if kind in ("l1", "l2"):
        return weight_norms(group, 1 if kind == "l1" else 2), None
    found = bn_gammas(analysis, group) if kind == "bn" else activation_importance(analysis, group, stats, centered)
    if found is None:
        what = "no BatchNormalization" if kind == "bn" else "no consumer with statistics"
        return weight_norms(group, 2), f"{group.name}: {what}; used l2"
    return found, None


def keep_count(group: ChannelGroup, remove: int, round_to: int, min_channels: int) -> int:
    unit = group.blocks * round_to // math.gcd(group.blocks, round_to)
    keep = max(group.channels - remove, min_channels, 1)
    keep = math.ceil(keep / unit) * unit
    return group.channels if keep >= group.channels else keep


def select(group: ChannelGroup, scores: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` best channels, the same number from each of the group's blocks (sorted)."""
    per_block, block_size = keep // group.blocks, group.channels // group.blocks
    chosen = []
    for b in range(group.blocks):
        block = scores[b * block_size:(b + 1) * block_size]
        best = np.argsort(-block, kind="stable")[:per_block]
        chosen.append(b * block_size + best)
    return np.sort(np.concatenate(chosen))
