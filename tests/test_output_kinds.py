"""Output kinds (graphopt.output_kinds): class scores (probabilities, log-probabilities, logits)
per sample or per position, told apart from embeddings and hidden states; the sample axis."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.output_kinds import batch_size, infer_kind, infer_kinds

RNG = np.random.default_rng(7)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _peaked_logits(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """What a trained classifier emits: one class far above the rest at each position, all signed."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-8.0, 2.0, shape)
    winners = rng.integers(0, shape[-1], shape[:-1])
    np.put_along_axis(logits, winners[..., None], 12.0, axis=-1)
    return logits.astype(np.float32)


def test_probabilities_per_sample_and_per_position():
    probs = infer_kind("y", [_softmax(RNG.normal(size=(4, 10)))])
    assert (probs.kind, probs.scores, probs.per_position) == ("class_scores", "probabilities", False)
    ctc = infer_kind("y", [_softmax(RNG.normal(size=(2, 40, 30)))])
    assert ctc.per_position and ctc.label() == "class scores per position [N, T, C], probabilities"


def test_time_major_log_softmax_ctc_head_finds_the_batch_axis():
    x = RNG.normal(size=(40, 3, 30))  # [T, N, C]
    log_probs = (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)
    kind = infer_kind("out", [log_probs], batches=[3])
    assert (kind.scores, kind.sample_axis) == ("log_probabilities", 1)
    assert kind.label() == "class scores per position [T, N, C], log_probabilities"


@pytest.mark.parametrize("shape, layout", [((6, 30), "[N, C]"), ((2, 25, 40), "[N, T, C]")])
def test_nameless_logits_are_read_from_their_values(shape, layout):
    kind = infer_kind("Add_277", [_peaked_logits(shape)])
    assert (kind.kind, kind.scores) == ("class_scores", "logits"), kind.reason
    assert layout in kind.label()


def test_hidden_states_are_not_logits_at_any_scale():
    hidden = RNG.normal(size=(2, 16, 384)).astype(np.float32)
    assert infer_kind("y", [hidden]).kind == "features"
    assert infer_kind("y", [hidden * 20]).kind == "features"  # the softmax gets peaky, the top does not stand out
    relu = np.maximum(_peaked_logits((2, 16, 64)), 0)  # decisive, but never negative: features
    assert infer_kind("y", [relu]).kind == "features"
    assert infer_kind("y", [_peaked_logits((4, 64)) / 50]).kind == "embedding"  # flat softmax


def test_names_decide_when_values_cannot():
    random_logits = RNG.normal(size=(4, 10)).astype(np.float32)  # an untrained head
    assert infer_kind("y", [random_logits]).kind == "embedding"
    assert infer_kind("logits", [random_logits]).scores == "logits"
    peaked = _peaked_logits((2, 16, 64))
    assert infer_kind("last_hidden_state", [peaked]).kind == "features"
    assert infer_kind("sentence_embedding", [peaked[:, 0]]).kind == "embedding"
    assert infer_kind("pair", [RNG.normal(size=(8, 2)).astype(np.float32) * 9]).kind == "embedding"  # C=2: by name
    assert infer_kind("token_logits", [hidden := RNG.normal(size=(2, 5, 9)).astype(np.float32)]).scores == "logits"
    assert infer_kind("cls_token", [hidden]).kind == "features"


def test_trailing_unit_axes_squeeze_and_other_kinds():
    head = _softmax(RNG.normal(size=(3, 10)))[:, :, None, None]  # [N, C, 1, 1]
    kind = infer_kind("prob", [head])
    assert kind.class_scores and not kind.per_position
    assert infer_kind("map", [RNG.random((2, 1, 8, 8)).astype(np.float32)]).kind == "dense_map"
    assert infer_kind("ids", [np.arange(6).reshape(2, 3)]).kind == "other"
    assert infer_kind("score", [RNG.normal(size=5).astype(np.float32)]).sample_axis is None


def test_sample_axis_comes_from_the_feeds_batch():
    feeds = [{"ids": np.zeros((3, 7), np.int64), "mask": np.ones((3, 7), np.int64)},
             {"ids": np.zeros((5, 7), np.int64), "mask": np.ones((5, 7), np.int64)}]
    assert [batch_size(f) for f in feeds] == [3, 5]
    ref = [{"h": RNG.normal(size=(7, b, 4)).astype(np.float32)} for b in (3, 5)]
    assert infer_kinds(ref, feeds)["h"].sample_axis == 1
    ref = [{"h": RNG.normal(size=(b, 7, 4)).astype(np.float32)} for b in (3, 5)]
    assert infer_kinds(ref, feeds)["h"].sample_axis == 0
    ref = [{"h": RNG.normal(size=(2, 2, 4)).astype(np.float32)} for _ in (3, 5)]  # no batch axis
    assert infer_kinds(ref, feeds)["h"].sample_axis is None
    assert infer_kinds(ref)["h"].sample_axis == 0  # without feeds: the first axis


@pytest.mark.slow
def test_minilm_outputs_are_embeddings_not_class_scores(minilm_path):
    from graphopt.runtime import run_model
    from models.real import MINILM_SENTENCES, minilm_tokenize

    feeds = [minilm_tokenize(MINILM_SENTENCES[48:64], 64)]
    reference = run_model(minilm_path, feeds)
    kinds = infer_kinds(reference, feeds)
    assert kinds["last_hidden_state"].label() == "features per position [N, T, D]"
    assert kinds["pooler_output"].label() == "embedding [N, D]"
    for name, array in reference[0].items():  # without the names' help, by the values alone
        assert not infer_kind("y", [array], [16]).class_scores, name


@pytest.mark.parametrize("name, scores", [("bbox_scores", "logits"), ("classLogits", "logits"),
                                          ("dense_map", None), ("pooler_output", None), ("xbox_feat", None)])
def test_name_words_are_matched_at_word_starts_not_anywhere(name, scores):
    """'bbox_scores' names scores (its 'box' is inside a word), camelCase splits into words."""
    random_logits = RNG.normal(size=(4, 10)).astype(np.float32)  # values alone cannot tell
    assert infer_kind(name, [random_logits]).scores == scores
