"""Quantization profiles from user files (profile_files.py): loaded, validated, applied."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantize.profile_files import load_profile
from graphopt.passes.quantize.profiles import get_profile
from graphopt.recipes import parse_pass_spec
from tests.passes.quantize.test_quantize import _conv_and_gemm_model, _feeds, quantize

GEMM_ONLY = {"description": "dense layers only", "activation": {"dtype": "int8", "symmetric": True},
             "weight": {"dtype": "int8", "symmetric": True, "bits": 8},
             "ops": {"Gemm": {"role": "compute", "activations": [0], "weight": 1}}}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_toml_profile_extends_its_base(tmp_path):
    path = _write(tmp_path, "npu.toml", """
base = "tensorrt"
description = "an NPU without residual Add"
drop_ops = ["Add"]
latency_check = false
[ops.Sigmoid]
role = "elementwise"
output = true
""")
    profile, base = load_profile(path), get_profile("tensorrt")
    assert profile.name == "file:npu" and profile.description == "an NPU without residual Add"
    assert "Add" not in profile.ops and profile.ops["Sigmoid"].output is True
    assert profile.ops["Conv"] == base.ops["Conv"] and profile.activation == base.activation
    assert profile.latency_check is False


def test_a_file_sets_the_default_rule_and_the_wide_type_as_the_qnn_profile_does(tmp_path):
    from graphopt.passes.quantize.profiles import OpRule, TensorType

    path = _write(tmp_path, "npu16.toml", """
base = "tensorrt"
wide = {dtype = "uint16"}
[default]
role = "elementwise"
always = true
""")
    profile = load_profile(path)
    assert profile.default == OpRule("elementwise", always=True)
    assert profile.wide == TensorType("uint16", False)
    assert profile.rule("Tanh") == profile.default and profile.rule("Shape") is None  # no float math: no rule
    proto = _conv_and_gemm_model()
    out, result = quantize(proto, _feeds(proto, 3, scale=0.5), profile=path)
    unlisted = set(result.stats["quantized_by_op"]) - set(get_profile("tensorrt").ops)
    assert unlisted, result.stats["quantized_by_op"]  # ops only the default rule covers were quantized


def test_a_profile_with_16_bit_activations_gets_their_rules(tmp_path):
    from graphopt.passes.quantize.options import QuantizeOptions, resolve_profile

    path = _write(tmp_path, "a16w8.json", json.dumps({**GEMM_ONLY, "activation": {"dtype": "uint16"}}))
    profile = resolve_profile(QuantizeOptions(profile=path))
    assert profile.activation.dtype == "uint16" and not profile.activation.symmetric
    assert profile.min_opset == 21 and not profile.bias_int32 and not profile.latency_check


def test_a_standalone_json_profile_places_qdq_as_it_says(tmp_path):
    path = _write(tmp_path, "gemm.json", json.dumps(GEMM_ONLY))
    proto = _conv_and_gemm_model()
    out, result = quantize(proto, _feeds(proto, 3, scale=0.5), profile=path)
    dq_into = {n.op_type for n in out.graph.node
               if any(i in {d.output[0] for d in out.graph.node if d.op_type == "DequantizeLinear"} for i in n.input)}
    assert "Gemm" in dq_into and "Conv" not in dq_into
    zero_points = [onnx.numpy_helper.to_array(t) for t in out.graph.initializer if "zero_point" in t.name]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)  # symmetric int8
    assert result.stats["quantized_by_op"] == {"Gemm": 1}


@pytest.mark.parametrize("text, said", [
    ('base = "tensorrt"\nfold_reul = true\n', "unknown field(s) fold_reul"),
    ('base = "tensorrt"\n[ops.Conv]\nrole = "computer"\n', "ops.Conv.role: expected one of compute"),
    ('base = "tensorrt"\n[ops.Conv]\nrole = "compute"\nweight = -1\n', "ops.Conv.weight: expected an input index"),
    ('base = "tensorrt"\nactivation = {dtype = "int4"}\n',
     "activation.dtype: expected one of uint8, int8, uint16, int16, float8e4m3fn"),
    ('base = "tensorrt"\nweight = {dtype = "int16"}\n', "weight.dtype: expected one of uint8, int8, float8e4m3fn"),
    ('base = "tensorrt"\nweight = {dtype = "int8", bits = 4}\n', "weight.bits: expected 7 or 8"),
    ('base = "hexagon"\n', "base: expected one of ort-cpu, tensorrt, openvino, qnn"),
    ('description = "no base"\n', "without `base`, activation, weight, ops must be given"),
    ('base = "tensorrt"\ndrop_ops = ["LSTM"]\n', "drop_ops: the base profile has no rule for 'LSTM'"),
    ('base = "tensorrt"\nmin_opset = "13"\n', "min_opset: expected int"),
    ('base = "tensorrt"\nlatency_provider = "npu"\n', "latency_provider: expected one of cpu"),
    ('base = "tensorrt\n', "not valid TOML"),
    ('base = "tensorrt"\nwide = {dtype = "uint8"}\n', "wide.dtype: expected one of uint16, int16"),
    ('base = "tensorrt"\n[default]\nrole = "elementwise"\nalways = 1\n', "default.always: expected bool"),
    ('base = "tensorrt"\ndefault = "elementwise"\n', "default: expected a table of rule fields"),
])
def test_a_wrong_profile_file_is_one_line_naming_the_field(tmp_path, text, said):
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(InputError) as exc:
        parse_pass_spec(f"quantize:profile={path}")
    assert said in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"pass 'quantize': quantize profile '{path}'")


def test_unknown_profile_names_and_missing_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="expected one of ort-cpu, tensorrt, openvino, qnn or a profile file"):
        parse_pass_spec("quantize:profile=hexagon")
    with pytest.raises(InputError, match="no such file"):
        parse_pass_spec(f"quantize:profile={tmp_path / 'absent.json'}")


def test_cli_refuses_a_bad_profile_file_with_exit_2(tmp_path):
    proto = _conv_and_gemm_model()
    model = tmp_path / "m.onnx"
    onnx.save(proto, model)
    bad = _write(tmp_path, "bad.json", json.dumps({**GEMM_ONLY, "wieght": {}}))
    done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(model), str(tmp_path / "o.onnx"),
                           "--passes", f"quantize:profile={bad}", "--calib", "synthetic"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and not (tmp_path / "o.onnx").exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown field(s) wieght" in lines[0]
