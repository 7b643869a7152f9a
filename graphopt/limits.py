"""Numeric ranges of the command line and the API, in a module that imports nothing heavy: the CLI
range-checks its arguments while parsing, before onnx / onnxruntime are loaded."""

MAX_RUNS = 100_000  # timed runs per measurement; more is a typo (10**20 runs never ends)
RUNS = (1, MAX_RUNS)
THREADS = (0, 1024)  # 0: ONNX Runtime's default
SEED = (0, (1 << 32) - 1)

# One line per built-in recipe, for `optimize --help` (graphopt.recipes.RECIPES holds the passes;
# a test keeps the two in step).
RECIPE_SUMMARIES = {
    "lossless": "clean-up, constant folding and exact fusions (default)",
    "modern": "lossless after raising the opset to 20 (standard Gelu, LayerNormalization)",
    "int8": "modern + static INT8 Q/DQ calibrated on --calib, sized to the budget",
    "int8-dynamic": "modern + INT8 weights, activations quantized at run time",
    "int4": "modern + weight-only block-wise INT4 (MatMulNBits with --target ort)",
    "fp16": "modern + float16 weights and compute, out-of-range ops kept float32 (GPU/NPU deployments)",
    "compress": "channel pruning, low-rank and INT8 sharing one budget",
    "auto": "search the chains above for the fastest (--goal latency) or smallest model in the budget",
}
# `--precision X`: the recipe it stands for
PRECISIONS = {"int8": "int8", "int8-dynamic": "int8-dynamic", "int4": "int4", "fp16": "fp16"}
