"""The `quantize` pass's options, the target profile they resolve to, and the calibration
options they give the calibration engine (built here only: method, percentile and the
histogram settings have one representation, `CalibrationOptions`, validated by it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from graphopt.exclusion import check_pattern
from graphopt.passes.quantize.calibration import CalibrationOptions
from graphopt.errors import InputError
from graphopt.passes.quantize.profile_files import is_profile_file, load_profile
from graphopt.passes.quantize.profiles import FLOAT8, PROFILES, QuantProfile, TensorType, get_profile
from graphopt.passes.quantize.ranges import parse_overrides

Method = Literal["minmax", "percentile", "entropy", "mse"]
SIXTEEN_BIT = ("uint16", "int16")
SIXTEEN_BIT_OPSET = 21  # QuantizeLinear / DequantizeLinear with 16-bit integers
FLOAT8_OPSET = 19  # ... with float8 types


@dataclass(frozen=True)
class QuantizeOptions:
    profile: str = "ort-cpu"  # ort-cpu|tensorrt|openvino|qnn, or a .toml/.json/.yaml profile file
    method: Method = "percentile"
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: Literal["auto", "uint8", "int8", "uint16", "int16", "float8e4m3fn"] = "auto"  # auto: the profile's
    weight_type: Literal["auto", "int8", "uint8", "float8e4m3fn"] = "auto"  # float8e4m3fn: FP8, opset 19
    weight_bits: int = 0  # 0: the profile's (ort-cpu: 7 on AVX2 without VNNI, else 8)
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""
    overrides: tuple[str, ...] = ()  # NAME=float or NAME=LO..HI
    budget_share: float = 1.0
    fallback: bool = True  # put sensitive nodes back to float (qnn: in 16-bit) until the budget holds
    max_fallback: int = 64  # at most this many nodes go back to float (qnn: to 16-bit)
    smooth: bool = True  # SmoothQuant for MatMul/Gemm inputs with outlier channels (alpha searched)
    rank: Literal["sqnr", "measured"] = "sqnr"  # fallback order: SQNR proxy, or one measurement per node
    sqnr_batches: int = 4  # calibration batches the per-tensor SQNR report uses
    calib_max_bytes: int = 512 * 2**20
    cache_dir: str = ""  # calibration cache: "" = default folder, "off" = none, else a folder
    speed_check: bool = True  # ort-cpu/openvino: drop the op families whose int8 kernels are slower here
    speed_runs: int = 30  # timed runs per candidate, in blocks of 3 compared pairwise with float
    speed_margin: float = 0.03  # a block-ratio quartile beyond 1 -/+ this calls int8 faster / slower
    threads: int = 0  # ORT intra-op threads for the speed check (0: ORT's default)

    def target_profile(self) -> QuantProfile:
        """The built-in profile `profile` names, or the one its file describes (profile_files.py)."""
        if is_profile_file(self.profile):
            try:
                return load_profile(self.profile)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        if self.profile not in PROFILES:
            raise ValueError(f"profile: expected one of {', '.join(PROFILES)} or a profile file "
                             f"(.toml, .json, .yaml), got '{self.profile}'")
        return get_profile(self.profile)

    def calibration(self, symmetric: bool) -> CalibrationOptions:
        """The calibration engine's options for this run's method, percentile and memory cap;
        `symmetric`: the activation type's (int8 symmetric: 128 entropy levels, else 256)."""
        return CalibrationOptions(method=self.method, percentile=self.percentile, symmetric=symmetric,
                                  num_quant_bins=128 if symmetric else 256, max_bytes=self.calib_max_bytes)

    def validate(self) -> None:
        activation = resolve_profile(self).activation.dtype  # the profile (or its file) is checked here
        if self.calib_max_bytes < 2**20:
            raise ValueError("calib_max_bytes must be at least 1 MiB")
        self.calibration(symmetric=False).validate()  # method, percentile (symmetric: valid either way)
        if self.weight_bits not in (0, 7, 8):
            raise ValueError(f"weight_bits must be 0 (profile default), 7 or 8, got {self.weight_bits}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_fallback < 0 or self.sqnr_batches < 0 or self.threads < 0:
            raise ValueError("max_fallback, sqnr_batches and threads must be >= 0")
        if self.speed_runs < 1 or not 0 <= self.speed_margin < 1:
            raise ValueError("speed_runs must be >= 1 and speed_margin in [0, 1)")
        if activation in (*SIXTEEN_BIT, *FLOAT8) and self.method in ("entropy", "mse"):
            raise ValueError(f"method={self.method} models 8-bit integer activations; with {activation} "
                             "activations use minmax or percentile")
        if self.weight_type in FLOAT8 and self.weight_bits:
            raise ValueError(f"weight_bits applies to integer weights, not {self.weight_type}")
        check_pattern(self.exclude_regex)
        parse_overrides(self.overrides)


def resolve_profile(options: QuantizeOptions) -> QuantProfile:
    """The target profile with the options' activation and weight types applied."""
    profile = options.target_profile()
    act, weight = profile.activation, profile.weight
    if options.activation_type != "auto":
        act = TensorType(options.activation_type, symmetric=not options.activation_type.startswith("uint"))
    if options.weight_type != "auto" or options.weight_bits:
        weight = TensorType(options.weight_type if options.weight_type != "auto" else weight.dtype, True,
                            options.weight_bits or weight.bits)
    # a Relu folds into the Q after it only where the Q's range starts at 0 (asymmetric: z = qmin);
    # a symmetric Q keeps the negative half, so absorbing the Relu would let negatives through
    # a wide fallback (qnn: uint16) only widens 8-bit activations; 16-bit or float8 ones go back to float
    profile = replace(profile, activation=act, weight=weight, fold_relu=profile.fold_relu and not act.symmetric,
                      wide=None if act.beyond_int8 else profile.wide)
    if act.is_float8 or weight.is_float8:
        profile = with_float8_rules(profile)
    return with_sixteen_bit_rules(profile) if act.dtype in SIXTEEN_BIT else profile


def with_float8_rules(profile: QuantProfile) -> QuantProfile:
    """FP8 (E4M3FN) Q/DQ: QuantizeLinear/DequantizeLinear take float8 from opset 19; a bias stays
    float (there is no int32 bias for float8 kernels); Gather from a float8 table has no CPU
    kernel, so embeddings stay float; and no CPU kernel computes in float8, so there is nothing
    to time against float here (TensorRT on Hopper-class GPUs runs these graphs)."""
    ops = {op: rule for op, rule in profile.ops.items() if rule.role != "embedding"}
    return replace(profile, min_opset=max(profile.min_opset, FLOAT8_OPSET), latency_check=False,
                   bias_int32=False, ops=ops, notes=(*profile.notes, "float8: opset >= 19, float bias, "
                                                     "embeddings float, no latency check", ORT_FLOAT8_RELU))


# measured on ORT 1.32 (tests/passes/quantize/test_float8.py); TensorRT, the target, is not affected
ORT_FLOAT8_RELU = ("checking a float8 model on ONNX Runtime's CPU EP: its ReluQuantRewrite optimizer drops a Relu "
                   "in front of a float8 QuantizeLinear (as if the Q clipped at 0, as uint8 does), so run it with "
                   "disabled_optimizers=['ReluQuantRewrite'] or ORT_ENABLE_BASIC; graphopt's own checks run "
                   "without graph optimizations")


def with_sixteen_bit_rules(profile: QuantProfile) -> QuantProfile:
    """16-bit activations: QuantizeLinear/DequantizeLinear take them from opset 21; no CPU integer
    kernel reads them (the Q/DQ pairs run as written), so there is nothing to time against float;
    and an int32 bias at scale s_x·s_w would overflow where s_x is 256x finer, so biases stay float."""
    return replace(profile, min_opset=max(profile.min_opset, SIXTEEN_BIT_OPSET), latency_check=False,
                   bias_int32=False, notes=(*profile.notes, "16-bit activations: opset >= 21, float bias, "
                                            "no latency check (no integer kernel runs them on CPU)"))


__all__ = ["Method", "QuantizeOptions", "resolve_profile"]
