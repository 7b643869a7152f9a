"""PP-OCR (text detection, recognition, orientation) models shipped by rapidocr-onnxruntime.

``ppocr_models()`` points at the three ``.onnx`` files inside the installed package (no copy):
``det`` ch_PP-OCRv4_det (DB detector), ``rec`` ch_PP-OCRv4_rec (SVTR-LCNet, CTC over 6625
classes), ``cls`` ch_ppocr_mobile_v2.0_cls (0 / 180 degrees). Each has one float32 input ``x``
``[N, 3, H, W]`` (BGR, normalized to [-1, 1]).

Inputs are rendered here, never downloaded: document-like pages (off-white paper, lines of dark
text in Pillow's bundled Aileron font) and single text lines, pre-processed exactly as
rapidocr_onnxruntime 1.4.4 does (``tests/models/test_real.py`` checks that against its classes):

- det: the page goes through ``DetPreProcess(limit_side_len=736, limit_type="min")``: if the
  short side is under 736 it is scaled up to 736, both sides rounded to a multiple of 32
  (cv2.resize, bilinear), then ``(x / 255 - 0.5) / 0.5``, HWC -> CHW. A 600x800 page becomes
  ``[N, 3, 992, 736]``; the output is a probability map ``[N, 1, 992, 736]``.
- rec: ``rec_img_shape [3, 48, 320]``: each line is resized to height 48 keeping its aspect
  ratio; the batch width is ``int(48 * max(320 / 48, widest w / h))``, lines are right-padded with
  0 after normalization. Output ``[N, W / 8, 6625]`` softmax; ``ppocr_rec_decode`` decodes it.
- cls: ``cls_image_shape [3, 48, 192]``: same resize, width capped at 192, padded to 192.
  Output ``[N, 2]`` softmax over (0, 180).

Needs the ``models`` extra: ``pip install -e ".[models]"``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

__all__ = [
    "ppocr_characters",
    "ppocr_cls_batch",
    "ppocr_det_preprocess",
    "ppocr_inputs",
    "ppocr_models",
    "ppocr_rec_batch",
    "ppocr_rec_decode",
    "ppocr_render_line",
    "ppocr_truth",
]

MODEL_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
PAGE_SIZE = (600, 800)  # width, height of a rendered page, before det pre-processing
DET_LIMIT_SIDE = 736
REC_SHAPE = (3, 48, 320)
CLS_SHAPE = (3, 48, 192)
WORDS = (
    "the model graph node tensor input output batch layer weight scale invoice total date "
    "amount order number customer address street city page report table figure section "
    "summary chapter account balance payment due paid shipping item price quantity tax "
    "north south river market office phone email version release update server client "
    "data value result error check test build export import optimize fusion pruning"
).split()


def ppocr_models() -> dict[str, Path]:
    """Paths of the det, rec and cls models inside the installed rapidocr_onnxruntime package."""
    import rapidocr_onnxruntime

    folder = Path(rapidocr_onnxruntime.__file__).resolve().parent / "models"
    paths = {kind: folder / name for kind, name in MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"rapidocr_onnxruntime lacks model file(s): {', '.join(missing)}")
    return paths


@functools.lru_cache(maxsize=1)
def ppocr_characters() -> tuple[str, ...]:
    """The rec model's CTC classes: "blank", its dictionary (model metadata "character"), " "."""
    import onnx

    model = onnx.load(str(ppocr_models()["rec"]))
    meta = {prop.key: prop.value for prop in model.metadata_props}
    return ("blank", *meta["character"].splitlines(), " ")


def ppocr_rec_decode(probs: np.ndarray) -> list[str]:
    """Greedy CTC decoding of rec output ``[N, T, C]``: argmax, merge repeats, drop blanks."""
    chars = ppocr_characters()
    if probs.ndim != 3 or probs.shape[2] != len(chars):
        raise ValueError(f"expected [N, T, {len(chars)}] rec output, got {list(probs.shape)}")
    texts = []
    for best in probs.argmax(axis=2):
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        texts.append("".join(chars[i] for i in best[keep]))
    return texts


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled Aileron (FreeType)


def ppocr_render_line(text: str, size: int = 32, pad: int = 6,
                      ink=(20, 20, 20), paper=(250, 248, 240)) -> np.ndarray:
    """A tight text-line crop (as det + crop would give rec/cls), BGR uint8 ``[h, w, 3]``."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=ink)
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def _render_page(lines: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """A document-like page: off-white paper, left-aligned lines of varied size and ink.

    Returns the BGR uint8 page and ``(text, (x0, y0, x1, y1))`` of each line drawn on it.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", PAGE_SIZE, (250, 248, 240))
    draw = ImageDraw.Draw(image)
    drawn, y = [], int(rng.integers(30, 60))
    for text in lines:
        size = int(rng.integers(18, 30))
        ink = (20, 20, 20) if rng.random() < 0.8 else (30, 40, 120)
        x = int(rng.integers(30, 70))
        box = draw.textbbox((x, y), text, font=_font(size))
        if box[3] > PAGE_SIZE[1] - 30:
            break
        if box[2] > PAGE_SIZE[0] - 10:
            continue
        draw.text((x, y), text, font=_font(size), fill=ink)
        drawn.append((text, box))
        y += int(size * rng.uniform(1.8, 2.6))
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1]), drawn


def _line_text(rng: np.random.Generator, words: tuple[int, int]) -> str:
    parts = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(*words)))]
    if rng.random() < 0.5:
        parts.append(str(int(rng.integers(1, 10000))))
    if rng.random() < 0.3:
        parts[0] = parts[0].capitalize()
    return " ".join(parts)


def ppocr_det_preprocess(image: np.ndarray) -> np.ndarray:
    """rapidocr's DetPreProcess (limit_type "min", 736): BGR uint8 -> ``[1, 3, H, W]`` float32."""
    import cv2

    h, w = image.shape[:2]
    ratio = DET_LIMIT_SIDE / min(h, w) if min(h, w) < DET_LIMIT_SIDE else 1.0
    resize_h = int(round(int(h * ratio) / 32) * 32)
    resize_w = int(round(int(w * ratio) / 32) * 32)
    resized = cv2.resize(image, (resize_w, resize_h))
    mean = std = np.array([0.5, 0.5, 0.5])
    normalized = (resized.astype("float32") * (1 / 255.0) - mean) / std
    return normalized.transpose((2, 0, 1))[None].astype(np.float32)


def _resize_norm(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` keeping the aspect ratio (at most ``width``), normalize, right-pad."""
    import cv2

    h, w = image.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / float(h))))
    resized = cv2.resize(image, (resized_w, height)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def ppocr_rec_batch(lines: list[np.ndarray]) -> np.ndarray:
    """rapidocr's rec pre-processing of one batch of BGR line crops -> ``[N, 3, 48, W]``."""
    _, height, width = REC_SHAPE
    max_ratio = max([width / height] + [img.shape[1] / img.shape[0] for img in lines])
    batch_width = int(height * max_ratio)
    return np.stack([_resize_norm(img, height, batch_width) for img in lines])


def ppocr_cls_batch(lines: list[np.ndarray]) -> np.ndarray:
    """rapidocr's cls pre-processing of BGR line crops -> ``[N, 3, 48, 192]``."""
    _, height, width = CLS_SHAPE
    return np.stack([_resize_norm(img, height, width) for img in lines])


def _samples(kind: str, count: int, seed: int) -> list[tuple[np.ndarray, object]]:
    """(BGR image, ground truth) pairs: det pages + their lines, rec lines + text, cls + angle."""
    if kind not in MODEL_FILES:
        raise ValueError(f"kind must be one of {', '.join(MODEL_FILES)}, not {kind!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        if kind == "det":
            lines = [_line_text(rng, (2, 6)) for _ in range(int(rng.integers(10, 18)))]
            samples.append(_render_page(lines, rng))
            continue
        text = _line_text(rng, (1, 3))
        image = ppocr_render_line(text, size=int(rng.integers(24, 40)), pad=int(rng.integers(3, 9)))
        if kind == "rec":
            samples.append((image, text))
        else:
            angle = 180 if rng.random() < 0.5 else 0
            samples.append((np.ascontiguousarray(image[::-1, ::-1]) if angle else image, angle))
    return samples


def ppocr_inputs(kind: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed ``{"x": [count, 3, H, W]}`` of rendered, rapidocr-preprocessed samples.

    Shapes (seed 0): det ``[count, 3, 992, 736]``; rec ``[count, 3, 48, W]`` with W >= 320 from
    the widest line; cls ``[count, 3, 48, 192]``. ``ppocr_truth`` gives what they show.
    """
    images = [image for image, _ in _samples(kind, count, seed)]
    if kind == "det":
        return {"x": np.concatenate([ppocr_det_preprocess(image) for image in images])}
    return {"x": ppocr_rec_batch(images) if kind == "rec" else ppocr_cls_batch(images)}


def ppocr_truth(kind: str, count: int, seed: int = 0) -> list:
    """Ground truth of ``ppocr_inputs(kind, count, seed)``. det: per page, the lines drawn as
    ``(text, (x0, y0, x1, y1))`` in page pixels (600x800, before resizing); rec: the text; cls: 0
    or 180 (degrees the crop was rotated)."""
    return [truth for _, truth in _samples(kind, count, seed)]
