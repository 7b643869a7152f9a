"""Real-model cases for tools/bench_quantize.py: data splits, the latency feed and the fidelity metric.

- minilm: all-MiniLM-L6-v2. Calibration and the pass's budget: the first 48 of MINILM_SENTENCES,
  one sentence per feed at its own length (no padding, as a batch-1 caller sends them; the
  sequence axis is dynamic). Fidelity on the other 24, padded to 128 in batches of 8: the worst
  per-sentence cosine of the sentence embeddings (masked mean + L2, as sentence-transformers
  computes them). Latency: one sentence padded to 128 tokens (batch 1).
- det: PP-OCRv4 det on rendered pages ([1, 3, 992, 736]); fidelity = fraction of pixels where
  (prob > 0.3) agrees with FP32 over held-out pages.
- rec: PP-OCRv4 rec on rendered text lines; fidelity = decoded strings equal to FP32's.
- cls: PP-OCR v2 orientation classifier; fidelity = top-1 agreement with FP32.
Calibration, budget and held-out samples come from different seeds (PP-OCR) or sentences (MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Feed = dict[str, np.ndarray]


@dataclass
class QuantCase:
    name: str
    source: Path
    calib: list[Feed]  # calibration feeds
    budget_data: list[Feed]  # what the pass measures its accuracy budget on (not the held-out set)
    holdout: list[Feed]  # fidelity is measured here
    latency_feed: Feed  # batch 1
    fidelity: Callable[[list[list[np.ndarray]], list[list[np.ndarray]]], float]  # (fp32, candidate) outputs
    metric: str
    bar: float
    budget: list[str]


def _batches(feed: Feed, size: int) -> list[Feed]:
    count = next(iter(feed.values())).shape[0]
    return [{k: v[i:i + size] for k, v in feed.items()} for i in range(0, count, size)]


def _unpadded(batch: Feed) -> list[Feed]:
    """One feed per sentence, cut to its own token count."""
    lengths = batch["attention_mask"].sum(axis=1)
    return [{k: v[i:i + 1, :n] for k, v in batch.items()} for i, n in enumerate(lengths)]


def minilm_case(workdir: Path) -> QuantCase:
    from models.real import MINILM_CALIB_COUNT, MINILM_SENTENCES, minilm_embeddings, minilm_onnx, minilm_tokenize

    source = Path("/tmp/graphopt-models/minilm.onnx")
    if not source.exists():
        source = minilm_onnx(workdir / "minilm.onnx")
    calib = _unpadded(minilm_tokenize(MINILM_SENTENCES[:MINILM_CALIB_COUNT], 128))
    held = minilm_tokenize(MINILM_SENTENCES[MINILM_CALIB_COUNT:], 128)
    holdout = _batches(held, 8)

    def fidelity(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
        worst = 1.0
        for feed, r, g in zip(holdout, ref, got):
            a = minilm_embeddings(r[0], feed["attention_mask"])
            b = minilm_embeddings(g[0], feed["attention_mask"])
            worst = min(worst, float(np.min(np.sum(a * b, axis=1))))
        return worst

    return QuantCase("minilm", source, calib, calib, holdout,
                     {k: v[:1] for k, v in held.items()}, fidelity, "min embedding cosine", 0.99,
                     ["cosine=0.99"])


def _ppocr_case(kind: str, counts: tuple[int, int, int], batch: int, metric: str, bar: float,
                budget: list[str], fidelity_of) -> QuantCase:
    from models.real import ppocr_inputs, ppocr_models

    calib, check, held = (ppocr_inputs(kind, n, seed=s)["x"] for n, s in zip(counts, (1, 3, 2)))
    holdout = [{"x": held[i:i + batch]} for i in range(0, len(held), batch)]

    def fidelity(ref, got) -> float:
        return fidelity_of(np.concatenate([r[0] for r in ref]), np.concatenate([g[0] for g in got]))

    return QuantCase(kind, ppocr_models()[kind], [{"x": calib[i:i + batch]} for i in range(0, len(calib), batch)],
                     [{"x": check[i:i + batch]} for i in range(0, len(check), batch)], holdout,
                     {"x": held[:1]}, fidelity, metric, bar, budget)


def det_fidelity(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean((ref > 0.3) == (got > 0.3)))


def rec_fidelity(ref: np.ndarray, got: np.ndarray) -> float:
    from models.real import ppocr_rec_decode

    return float(np.mean([a == b for a, b in zip(ppocr_rec_decode(ref), ppocr_rec_decode(got))]))


def cls_fidelity(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))


CASES = {
    "minilm": minilm_case,
    "det": lambda workdir: _ppocr_case("det", (8, 2, 6), 1, "text-map agreement", 0.99, ["cosine=0.99"],
                                       det_fidelity),
    # rec: top-1 per time step (graphopt.metrics on [N, T, C] softmax), what greedy CTC decodes
    "rec": lambda workdir: _ppocr_case("rec", (64, 16, 96), 8, "equal strings", 0.95,
                                       ["top1=0.999", "cosine=0.995"], rec_fidelity),
    "cls": lambda workdir: _ppocr_case("cls", (64, 16, 96), 8, "top-1 agreement", 0.98,
                                       ["cosine=0.995", "top1=0.98"], cls_fidelity),
}
