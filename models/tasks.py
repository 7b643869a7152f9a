"""The real models as tasks: model file, calibration feeds, held-out feeds and a task metric.

One definition shared by the benchmark tools (int8, low-rank, pruning, peer comparison), so
every table judges a model the same way:

- ``minilm``: all-MiniLM-L6-v2; calibration = the first 48 sentences of ``MINILM_SENTENCES``,
  held out = the other 24 (batches of 8, padded to 128 tokens); metric = sentence-embedding
  cosine vs FP32 (mean and worst over held-out sentences).
- ``det``: PP-OCRv4 detection on rendered pages; metric = text-map agreement, the fraction of
  pixels where (probability > 0.3) agrees with FP32.
- ``rec``: PP-OCRv4 recognition on rendered line crops; metric = fraction of lines whose greedy
  CTC decoding equals FP32's.
- ``cls``: orientation classifier; metric = top-1 agreement with FP32.

Calibration and held-out feeds come from different seeds (PP-OCR) or different sentences
(MiniLM). ``bench_feed`` is batch 1, what the latency columns time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Feed = dict[str, np.ndarray]
Outputs = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    calib: list[Feed]
    holdout: list[Feed]
    bench_feed: Feed
    metric: str  # what `fidelity` returns
    bar: float  # the acceptance bar for `fidelity`
    fidelity: Callable[[Outputs, Outputs, list[Feed]], float]


def _split(feed: Feed) -> list[Feed]:
    n = next(iter(feed.values())).shape[0]
    return [{k: v[i:i + 1] for k, v in feed.items()} for i in range(n)]


def _batches(feed: Feed, size: int) -> list[Feed]:
    n = next(iter(feed.values())).shape[0]
    return [{k: v[i:i + size] for k, v in feed.items()} for i in range(0, n, size)]


def minilm_cosines(ref: Outputs, cand: Outputs, feeds: list[Feed]) -> np.ndarray:
    """Per-sentence cosine between FP32 and candidate sentence embeddings."""
    from models.real import minilm_embeddings

    out = []
    for r, c, f in zip(ref, cand, feeds):
        a = minilm_embeddings(r["last_hidden_state"], f["attention_mask"])
        b = minilm_embeddings(c["last_hidden_state"], f["attention_mask"])
        out.append(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    return np.concatenate(out)


def _first(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values()))


def det_agreement(ref: Outputs, cand: Outputs, feeds: list[Feed]) -> float:
    agree = [np.mean((_first(r) > 0.3) == (_first(c) > 0.3)) for r, c in zip(ref, cand)]
    return float(np.mean(agree))


def rec_equal(ref: Outputs, cand: Outputs, feeds: list[Feed]) -> float:
    from models.real import ppocr_rec_decode

    a = [s for r in ref for s in ppocr_rec_decode(_first(r))]
    b = [s for c in cand for s in ppocr_rec_decode(_first(c))]
    return float(np.mean([x == y for x, y in zip(a, b)]))


def cls_top1(ref: Outputs, cand: Outputs, feeds: list[Feed]) -> float:
    a = np.concatenate([np.argmax(_first(r), axis=-1) for r in ref])
    b = np.concatenate([np.argmax(_first(c), axis=-1) for c in cand])
    return float(np.mean(a == b))


@functools.lru_cache(maxsize=None)
def minilm_task(model_dir: str = "/tmp/graphopt-models", max_len: int = 128) -> Task:
    from models.real import MINILM_CALIB_COUNT, MINILM_SENTENCES, minilm_onnx, minilm_tokenize

    path = minilm_onnx(Path(model_dir) / "minilm.onnx")
    calib = minilm_tokenize(MINILM_SENTENCES[:MINILM_CALIB_COUNT], max_len=max_len)
    held = minilm_tokenize(MINILM_SENTENCES[MINILM_CALIB_COUNT:], max_len=max_len)
    return Task("minilm", path, _batches(calib, 8), _batches(held, 8), _split(held)[0],
                "embedding cosine (worst sentence)", 0.99,
                lambda r, c, f: float(np.min(minilm_cosines(r, c, f))))


@functools.lru_cache(maxsize=None)
def ppocr_task(kind: str, calib_count: int | None = None, held_count: int | None = None) -> Task:
    """det: 8 calibration pages, 4 held out; rec: 64 lines / 64; cls: 64 / 64."""
    from models.real import ppocr_inputs, ppocr_models

    calib_count = calib_count or {"det": 8, "rec": 64, "cls": 64}[kind]
    held_count = held_count or {"det": 4, "rec": 64, "cls": 64}[kind]
    per_feed = 1 if kind == "det" else 16
    calib = _batches(ppocr_inputs(kind, calib_count, seed=1), per_feed)
    held = _batches(ppocr_inputs(kind, held_count, seed=2), per_feed)
    metric, bar, fn = {"det": ("text-map agreement", 0.99, det_agreement),
                       "rec": ("decoded strings equal", 0.95, rec_equal),
                       "cls": ("top-1 agreement", 0.98, cls_top1)}[kind]
    return Task(kind, ppocr_models()[kind], calib, held, _split(held[0])[0], metric, bar, fn)


def get_task(name: str) -> Task:
    return minilm_task() if name == "minilm" else ppocr_task(name)


TASKS = ("minilm", "det", "rec", "cls")
