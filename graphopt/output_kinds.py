"""What each model output is, so lossy passes are judged by the task's metric (design.md, "Models").

An output is inferred once per run from its name, its shape and the *input* model's values on the
held-out feeds (the reference), never from a candidate. Trailing axes of length 1 are dropped first
(a `[N, C, 1, 1]` classifier head reads as `[N, C]`).

Samples. The sample axis is the axis whose length is the feed's batch size (the first-axis length
most inputs of the feed share): axis 0 (`[N, ...]`), else axis 1 for rank >= 3 (`[T, N, C]`: a
time-major CTC head). Without the feeds it is axis 0. Scalars, 1-D outputs and outputs with no such
axis have none: each feed is one sample. Per-sample metrics (graphopt.metrics) use this axis.

Kinds (first rule that holds):
- class scores: the last axis holds C >= 2 class scores, one set per sample (`[N, C]`) or per
  position (`[N, T, C]`, `[T, N, C]`, N-D). The scores are
  - probabilities: every value in [0, 1] and every position sums to 1 (a softmax), any rank;
  - log-probabilities: every value <= 0 and logsumexp 0 at every position (a log-softmax), any rank;
  - logits (rank 2 or 3): some value < 0 (ReLU features and sigmoid maps are not logits), and
    the name has one of `LOGIT_WORDS` (`token_logits`), or else none of `OTHER_WORDS` and one of
    `CLASS_WORDS` (`scores`, but not `cls_embedding`), or else (no word either way) the values
    read as a trained classifier's decisions (C >= 3; see below).
- embedding `[N, D]`, features per position `[N, T, D]` (hidden states), dense map (rank >= 4:
  images, masks, feature maps): any other float output of that rank.
- other: scalars, 1-D outputs, non-float outputs.

Logits versus hidden states. Both are signed `[N, T, D]` floats. Logits are trained to be
exponentiated: at a typical position the softmax puts most of its mass on one class, and the top
score stands well clear of the runner-up. Hidden states and embeddings (LayerNorm outputs, unit
vectors) are not meant for a softmax: at their natural scale the softmax over them is almost flat,
and their top value is one of many similar ones. Over at most `MAX_POSITIONS` positions spread
evenly over the output, the values read as logits when
    median over positions of H(softmax) / ln C <= 0.5        (decisive), and
    median over positions of (top1 - top2) / std >= 1.5       (the top class stands out).
The second test is scale-free, so a large scale alone does not make features read as logits;
names catch the usual exports (`last_hidden_state`, `*_embedding`, `pooler_output`). What stays
confusable: hidden states dominated by one outlier dimension read as logits (the default budget
then also holds their argmax, which the outlier keeps stable: stricter, not looser); a classifier
that is unsure on the held-out data reads as features (bound it with `--budget NAME:top1=...`).
Values measured on real models: docs/budget-task-metrics.md.
"""

from __future__ import annotations

from collections import Counter
import re
from dataclasses import dataclass

import numpy as np

Feed = dict[str, np.ndarray]

LOGIT_WORDS = ("logit", "softmax", "ctc")
CLASS_WORDS = ("score", "prob", "class", "cls")
OTHER_WORDS = ("embed", "hidden", "feat", "pool", "state", "encod", "latent", "token",  # features
               "mask", "map", "seg", "depth", "image", "img", "heat", "flow",  # dense maps
               "box", "coord", "offset", "regress")  # regression
MAX_POSITIONS = 1024
MAX_ELEMENTS = 1 << 22  # positions x classes read for the value statistics
DECISIVE_ENTROPY = 0.5  # median normalized softmax entropy at most this
STANDOUT_GAP = 1.5  # median (top1 - top2) / std at least this


@dataclass(frozen=True)
class OutputKind:
    kind: str = "other"  # class_scores | embedding | features | dense_map | other
    scores: str | None = None  # class scores: probabilities | log_probabilities | logits
    sample_axis: int | None = 0  # None: each feed is one sample
    rank: int = 0  # after dropping trailing length-1 axes
    reason: str = ""

    @property
    def class_scores(self) -> bool:
        return self.kind == "class_scores"

    @property
    def per_position(self) -> bool:
        """Class scores with positions besides the sample: [N, T, C], [T, N, C], [T, C]."""
        return self.class_scores and self.rank - 1 - (self.sample_axis is not None) >= 1

    def label(self) -> str:
        if self.class_scores:
            where = "per position" if self.per_position else "per sample"
            return f"class scores {where} {self.layout()}, {self.scores}"
        return {"embedding": "embedding", "features": "features per position",
                "dense_map": "dense map"}.get(self.kind, "other") + f" {self.layout()}"

    def layout(self) -> str:
        """Axis letters: N samples, T / H, W positions, C classes, D features ([...] for dense maps)."""
        if self.rank < 2 or self.kind == "dense_map":
            return "[N, ...]" if self.sample_axis == 0 and self.rank else "[...]"
        middle = self.rank - 1 - (self.sample_axis is not None)
        dims = {0: [], 1: ["T"], 2: ["H", "W"]}.get(middle, [f"D{i}" for i in range(1, middle + 1)])
        dims.append("C" if self.class_scores else "D")
        if self.sample_axis is not None:
            dims.insert(self.sample_axis, "N")
        return "[" + ", ".join(dims) + "]"


def squeeze_trailing(array: np.ndarray) -> np.ndarray:
    """Drop trailing length-1 axes, keeping at least two ([N, C, 1, 1] -> [N, C])."""
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def batch_size(feed: Feed) -> int | None:
    """The first-axis length most inputs of `feed` share (None without array inputs)."""
    sizes = [np.shape(a)[0] for a in feed.values() if np.ndim(a) >= 1]
    return Counter(sizes).most_common(1)[0][0] if sizes else None


def sample_axis(arrays: list[np.ndarray], batches: list[int | None] | None) -> int | None:
    """Axis 0 or 1 whose length is the batch size in every feed (see the module docstring)."""
    rank = arrays[0].ndim if arrays else 0
    if rank < 2:
        return None
    if not batches or any(b is None for b in batches):
        return 0
    for axis in (0, 1) if rank >= 3 else (0,):
        if all(a.shape[axis] == b for a, b in zip(arrays, batches)):
            return axis
    return None


def infer_kinds(reference: list[Feed], feeds: list[Feed] | None = None) -> dict[str, OutputKind]:
    """The kind of every output of `reference` (the input model's outputs on `feeds`)."""
    if not reference:
        return {}
    batches = [batch_size(f) for f in feeds] if feeds and len(feeds) == len(reference) else None
    return {name: infer_kind(name, [r[name] for r in reference], batches) for name in reference[0]}


def infer_kind(name: str, arrays: list[np.ndarray], batches: list[int | None] | None = None) -> OutputKind:
    """The kind of one output from its name and its reference values over all feeds."""
    arrays = [np.asarray(a) for a in arrays]
    axis = sample_axis(arrays, batches)
    arrays = [squeeze_trailing(a) for a in arrays]
    rank = arrays[0].ndim if arrays else 0
    if not arrays or any(a.ndim != rank or a.dtype.kind != "f" for a in arrays) or rank < 2:
        return OutputKind("other", None, axis, rank, "not a float tensor of rank >= 2")
    if arrays[0].shape[-1] < 2 or axis == rank - 1 or not any(a.size for a in arrays):
        return OutputKind("other", None, axis, rank, "no class axis (last axis of length < 2)")
    scores, reason = _class_scores(name, arrays, rank)
    if scores is not None:
        return OutputKind("class_scores", scores, axis, rank, reason)
    kind = "embedding" if rank == 2 else "features" if rank == 3 else "dense_map"
    return OutputKind(kind, None, axis, rank, reason)


def _class_scores(name: str, arrays: list[np.ndarray], rank: int) -> tuple[str | None, str]:
    if all(_is_distribution(a) for a in arrays):
        return "probabilities", "values in [0, 1] summing to 1 over the last axis"
    rows = _sampled_rows(arrays)
    if not rows.size:
        return None, "no finite values"
    if all(float(np.max(a)) <= 1e-6 for a in arrays) and np.allclose(_logsumexp(rows), 0.0, atol=1e-3):
        return "log_probabilities", "values <= 0 with logsumexp 0 over the last axis"
    if rank > 3:
        return None, "rank > 3 and not a (log-)softmax"
    if not any(float(np.min(a)) < 0 for a in arrays):
        return None, "no negative value (not logits)"
    if _names(name, LOGIT_WORDS):
        return "logits", f"name '{name}' names logits"
    if _names(name, OTHER_WORDS):
        return None, f"name '{name}' names features, a map or a regression"
    if _names(name, CLASS_WORDS):
        return "logits", f"name '{name}' names class scores"
    return _decisive(rows)


def _names(name: str, words: tuple[str, ...]) -> bool:
    """Whether a word of `name` (split at digits, punctuation and case) starts with one of `words`:
    "bbox_scores" names scores, not a box; "pooler_output" names a pooling."""
    tokens = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)
    return any(token.lower().startswith(word) for token in tokens for word in words)


def _decisive(rows: np.ndarray) -> tuple[str | None, str]:
    """Logits by value (module docstring): decisive softmax and a standout top class."""
    classes = rows.shape[1]
    if classes < 3:
        return None, "two columns: logits only by name"
    shifted = rows - rows.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    total = weights.sum(axis=1)
    entropy = (np.log(total) - (weights * shifted).sum(axis=1) / total) / np.log(classes)
    top2 = np.partition(rows, classes - 2, axis=1)[:, -2:]
    spread = rows.std(axis=1)
    gap = np.divide(top2[:, 1] - top2[:, 0], spread, out=np.zeros_like(spread), where=spread > 0)
    h, g = float(np.median(entropy)), float(np.median(gap))
    stats = f"median softmax entropy {h:.3g} of ln C, median top1-top2 gap {g:.3g} std"
    if h <= DECISIVE_ENTROPY and g >= STANDOUT_GAP:
        return "logits", f"decisive scores ({stats})"
    return None, f"not decisive scores ({stats})"


def _sampled_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Up to MAX_POSITIONS finite positions [P, C] (float64), spread evenly over all feeds."""
    classes = arrays[0].shape[-1]
    flat = [a.reshape(-1, classes) for a in arrays]
    total = sum(len(f) for f in flat)
    limit = max(16, min(MAX_POSITIONS, MAX_ELEMENTS // classes))
    step = max(1, -(-total // limit))
    rows = np.concatenate([f[::step] for f in flat]).astype(np.float64)
    return rows[np.all(np.isfinite(rows), axis=1)]


def _logsumexp(rows: np.ndarray) -> np.ndarray:
    top = rows.max(axis=1)
    return top + np.log(np.exp(rows - top[:, None]).sum(axis=1))


def _is_distribution(array: np.ndarray) -> bool:
    """Probabilities over the last axis (a softmax output: values in [0, 1] summing to 1)."""
    if array.ndim < 2 or array.shape[-1] < 2 or array.dtype.kind != "f" or not array.size:
        return False
    if not (array.min() >= 0 and array.max() <= 1 + 1e-6):
        return False
    return bool(np.allclose(array.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3))
