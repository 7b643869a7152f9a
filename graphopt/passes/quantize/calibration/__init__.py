"""Calibration for quantize: activation ranges from streamed statistics.

The face: `calibrate` with its `CalibrationOptions` and `TensorRange`, and `exposure_runs` (how
to expose tensors over the feeds under a memory cap, for other streamed statistics).
Routes (engine.py says which applies when): in-graph summaries (summaries, ingraph), model
segments for the histogram methods (segments, segmented), exposure; streaming statistics in
histogram, the methods' range math in methods; how feeds and names are split in plan; the
on-disk cache in cache.
"""

from graphopt.passes.quantize.calibration.engine import CalibrationOptions, TensorRange, calibrate
from graphopt.passes.quantize.calibration.plan import exposure_runs

__all__ = ["CalibrationOptions", "TensorRange", "calibrate", "exposure_runs"]
