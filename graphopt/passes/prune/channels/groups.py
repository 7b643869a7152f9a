"""Channel dependency groups for structured pruning: pure analysis, no edits.

Removing output channel c of a layer (a *seed*: Conv, ConvTranspose, Gemm or MatMul with a
constant weight) changes every tensor that carries that channel, so every weight, bias,
per-channel constant and shape constant that indexes those tensors must lose the same
index. The analysis walks the main graph in topological order and tracks, for each tensor,
which axis carries seed channels and how (`Dim`): a list of `Piece`s, each a range of one
seed's channels, `inner` positions per channel (after a Flatten/Reshape merged the trailing
dims into the channel axis). Channel index maps through the ops:

- elementwise unary ops, BatchNormalization, pooling, Resize/Pad off the channel axis: identity;
- Transpose/Squeeze/Unsqueeze/Reduce (off axis)/Softmax (off axis): the axis moves;
- Concat on the channel axis: pieces concatenate (offsets); Split: pieces are cut by range;
- Flatten / Reshape merging [C, H, W] into one axis: each channel spans H·W positions;
- binary ops (Add/Sub/Mul/Div/Max/Min/Where/…): operands that both carry channels must carry
  the same index map; two different seeds in the same place are *tied* (residual Add, the
  SE block's Mul): they must lose the same channels. Ties are edges of a networkx graph
  over seeds; its connected components are the groups;
- depthwise Conv (group = C): output channel c reads only input c, so it passes through;
  grouped Conv: its inputs must lose the same number of channels in each of its g blocks;
- sinks consume the channel axis: the input-channel axis of Conv/ConvTranspose/Gemm/MatMul
  weights (the *sites* the rewrite slices, with bias compensation).

Anything the analysis cannot prove safe refuses every seed it touches, with the reason:
channels reaching a graph output or a subgraph, an unknown op, a Reshape that splits the
channel axis, a non-constant operand of matching size (a graph input), a weight shared by
two layers, a non-constant weight. A group is prunable only if none of its seeds is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import onnx_ir as ir

from graphopt.passes.prune.channels import ops as channel_ops
from graphopt.passes.prune.channels.dims import Dim, Piece, Site, Tracker
from graphopt.passes.prune.common import const_array, describe

SEED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Seed:
    """A layer whose output channels can be removed (rows/columns of its weight)."""

    id: int
    node: ir.Node
    channels: int
    weight_axis: int
    blocks: int = 1
    refusals: list[str] = field(default_factory=list)


@dataclass
class ChannelGroup:
    id: int
    seeds: list[Seed]
    channels: int
    blocks: int
    refusal: str | None

    @property
    def name(self) -> str:
        return " + ".join(describe(s.node) for s in self.seeds)


@dataclass
class ChannelAnalysis:
    seeds: list[Seed]
    sites: list[Site]
    groups: list[ChannelGroup]
    group_of: dict[int, int]  # seed id -> group id
    ties: nx.Graph
    skipped: list[tuple[str, str]]  # layers that seed nothing: (layer, reason)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.refusal is None]

    def group_sites(self, group: ChannelGroup) -> list[Site]:
        ids = {s.id for s in group.seeds}
        return [site for site in self.sites if any(p.seed in ids for p in site.all_pieces())]


class _Walker(Tracker):
    def __init__(self, model: ir.Model):
        super().__init__(model)
        self.seeds: list[Seed] = []
        self.skipped: list[tuple[str, str]] = []

    def seed(self, seed_id: int) -> Seed:
        return self.seeds[seed_id]

    def run(self) -> None:
        for node in self.graph:
            tracked = [(i, v) for i, v in enumerate(node.inputs) if v is not None and v in self.dims]
            if tracked:
                reason = channel_ops.follow(self, node, tracked)
                if reason is not None:
                    for _, value in tracked:
                        self.refuse(self.dims[value], f"{node.op_type} '{describe(node)}': {reason}")
            if node.op_type in SEED_OPS and node.domain in ("", "ai.onnx") and node.outputs[0] not in self.dims:
                self._maybe_seed(node)
        self._check_escapes()

    def _check_escapes(self) -> None:
        for value, dim in self.dims.items():
            if value.is_graph_output():
                self.refuse(dim, f"channels reach graph output '{value.name}'")
            if any(user.graph is not self.graph for user, _ in value.uses()):
                self.refuse(dim, f"'{value.name}' is read inside a subgraph")

    def _maybe_seed(self, node: ir.Node) -> None:
        weight_value = node.inputs[1] if len(node.inputs) > 1 else None
        weight = const_array(weight_value)
        rank = self.rank(node.outputs[0])
        if weight is None:
            # an activation x activation MatMul (attention) is no layer; anything else is
            if weight_value is not None and (node.op_type != "MatMul" or weight_value.is_graph_input()):
                self.skipped.append((describe(node), f"weight '{weight_value.name}' is not constant "
                                     "(a graph input or computed at run time)"))
            return
        if rank is None or rank < 2 or weight.dtype.kind != "f":
            self.skipped.append((describe(node), "unknown output rank or non-float weight"))
            return
        axis, refusal = self._seed_layout(node, weight)
        if axis is None:
            return
        seed = Seed(len(self.seeds), node, int(weight.shape[axis]), axis)
        if node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1:
            seed.blocks = node.attributes.get_int("group", 1)
            if weight.shape[1] == 1:
                refusal = refusal or "depthwise Conv on channels no prunable layer produces"
        if len({id(u) for u, _ in weight_value.uses()}) > 1:
            refusal = refusal or f"weight '{weight_value.name}' is shared with another node"
        if refusal:
            seed.refusals.append(refusal)
        self.seeds.append(seed)
        out_axis = 1 if node.op_type in ("Conv", "ConvTranspose", "Gemm") else rank - 1
        self.dims[node.outputs[0]] = Dim(out_axis, rank, (Piece(seed.id, 0, seed.channels),))
        refusal = self._bias_site(node, seed, rank)
        if refusal:
            seed.refusals.append(refusal)

    def _seed_layout(self, node: ir.Node, weight) -> tuple[int | None, str | None]:
        """(axis of the weight holding output channels, refusal or None)."""
        if node.op_type == "Conv":
            return 0, None
        if node.op_type == "ConvTranspose":
            ok = node.attributes.get_int("group", 1) == 1
            return 1, None if ok else "grouped ConvTranspose"
        if weight.ndim != 2:
            return None, None
        if node.op_type == "Gemm":
            refusal = "Gemm with transA=1" if node.attributes.get_int("transA", 0) else None
            return (0 if node.attributes.get_int("transB", 0) else 1), refusal
        return 1, None

    def _bias_site(self, node: ir.Node, seed: Seed, rank: int) -> str | None:
        """Register the bias as a site of the seed's channels (or say why it cannot be)."""
        index = 2
        if len(node.inputs) <= index or node.inputs[index] is None:
            return None
        bias = const_array(node.inputs[index])
        if bias is None:
            return "bias is not constant"
        piece = (Piece(seed.id, 0, seed.channels),)
        if node.op_type == "Gemm":
            if bias.ndim == 0 or bias.shape[-1] == 1:
                return None
            if bias.shape[-1] != seed.channels:
                return "Gemm C does not broadcast over the output channels"
            self.sites.append(Site("const", node, index, bias.ndim - 1, piece))
            return None
        self.sites.append(Site("const", node, index, 0, piece))
        return None


def analyze(model: ir.Model) -> ChannelAnalysis:
    """Seeds, sites and groups of the model's main graph (shapes should be inferred first)."""
    walker = _Walker(model)
    walker.run()
    ties = nx.Graph()
    ties.add_nodes_from(s.id for s in walker.seeds)
    ties.add_edges_from(walker.ties)
    groups, group_of = [], {}
    for component in sorted(nx.connected_components(ties), key=min):
        members = [walker.seeds[i] for i in sorted(component)]
        group = _make_group(members, walker.block_needs)
        groups.append(group)
        group_of.update((s.id, group.id) for s in members)
    return ChannelAnalysis(walker.seeds, walker.sites, groups, group_of, ties, walker.skipped)


def _make_group(members: list[Seed], block_needs: list[tuple[int, int]]) -> ChannelGroup:
    ids = {s.id for s in members}
    channels = members[0].channels
    blocks = 1
    for b in [s.blocks for s in members] + [b for seed, b in block_needs if seed in ids]:
        blocks = blocks * b // math.gcd(blocks, b)
    reasons = list(dict.fromkeys(r for s in members for r in s.refusals))
    if any(s.channels != channels for s in members):
        reasons.append("tied layers have different channel counts")
    if channels % blocks:
        reasons.append(f"{channels} channels do not split into {blocks} equal blocks")
    return ChannelGroup(min(ids), members, channels, blocks, "; ".join(reasons) or None)
