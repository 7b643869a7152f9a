"""The run's data: which feeds verify, which calibrate, and which size the lossy passes.

Three roles, kept apart so that nothing is judged on the data that chose it (README "DATA"):
- verification feeds: the manager checks every pass and the run's budget on them;
- calibration feeds: quantizers take their ranges from them;
- search feeds: lossy passes size themselves to the budget on them (which nodes go back to float,
  how many channels or ranks to keep). A budget search takes tens of measurements and keeps the
  candidate that passes, so the feeds it searched on overstate how well that candidate does
  elsewhere (on a captcha CRNN: per-position top-1 1.0 on the 25 feeds the search used, 0.82%
  of positions changed on fresh captchas). With `--calib`, the search runs on up to
  `SEARCH_FEEDS` calibration feeds (evenly spaced) and verification stays on feeds neither
  calibration nor the search saw. Without real calibration data (`--data` only, or `--calib
  synthetic`) there is nothing apart to search on: the passes search on the verification feeds
  and the report says so.

`run_feeds` also builds the report's "data" entry with the one-line summary the CLI prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.data import (Feed, input_specs, parse_shapes, reject_infinite, split_holdout, synthesize_feeds,
                           validate_feed)
from graphopt.data_files import load_feeds
from graphopt.lazy_feeds import LazyFeeds, count_samples, subset
from graphopt.errors import InputError
from graphopt.io import LoadedModel
from graphopt.shape_search import ShapeChoice, choose_shapes
from graphopt.phases import timed

SYNTHETIC_FEEDS = 2
SYNTHETIC = "synthetic"  # `--calib synthetic`: run lossy passes on generated inputs (opt-in)
SEARCH_FEEDS = 64  # calibration feeds a budget search measures candidates on (time grows with it)


@dataclass
class RunData:
    verification: Sequence[Feed]
    calibration: Sequence[Feed]  # [] when the passes calibrate on the verification feeds
    search: Sequence[Feed]  # [] when the passes search on the verification feeds
    info: dict[str, Any]  # the report's "data" entry


def require_real_data(lossy: list[str], data, calib) -> None:
    """Lossy passes calibrate and judge themselves on the run's data; on generated inputs they
    pass on noise (an int8 captcha CRNN expecting 0..255 pixels verified at cosine 0.9993 on
    standard-normal inputs, then read 1% of captchas). Without --data or --calib they are
    refused unless the user opts in with `--calib synthetic`."""
    if lossy and data is None and calib is None:
        raise InputError(f"{lossy[0]} needs calibration data: --calib DATA (or --calib {SYNTHETIC} to run on "
                         "generated inputs, unchecked on real data)")


def is_synthetic(calib) -> bool:
    """The literal keyword wins over a file of that name; `./synthetic` means the file."""
    return isinstance(calib, str) and calib == SYNTHETIC


def search_feeds(calibration: Sequence[Feed], limit: int = SEARCH_FEEDS) -> Sequence[Feed]:
    """Up to `limit` of the calibration feeds, evenly spaced (a file sorted by anything keeps its spread)."""
    if len(calibration) <= limit:
        return calibration
    return subset(calibration, np.linspace(0, len(calibration) - 1, limit).round().astype(int))


@timed("read data")
def run_feeds(loaded: LoadedModel, data, calib, shapes, seed: int, calibrates: bool = True) -> RunData:
    """Verification, calibration and search feeds, and the report's "data" entry. With --calib
    and no --data the last quarter of the calibration feeds is held out (graphopt.data's rule);
    without either (or with `--calib synthetic`) feeds are synthesized and serve every role.
    `calibrates`: whether the run has a lossy pass (the summary mentions calibration only then)."""
    model = loaded.model
    specs = input_specs(model)
    shape_map = parse_shapes(shapes, specs) if isinstance(shapes, list) else (shapes or {})
    synthetic = is_synthetic(calib)
    calib_feeds = _load(calib, model) if calib is not None and not synthetic else []
    reject_infinite(calib_feeds, f"--calib {calib}" if isinstance(calib, (str, os.PathLike)) else "calibration data")
    read = {"calib_feeds_read": len(calib_feeds), "data_feeds_read": 0}
    if data is not None:
        feeds = _load(data, model)
        read["data_feeds_read"] = len(feeds)
        search = search_feeds(calib_feeds)
        info = _data_info("data", read, calib_feeds or feeds, feeds, 0, synthetic, calibrates, len(search))
        return RunData(feeds, calib_feeds, search, info)
    if calib_feeds:
        calib_part, held_out = split_holdout(calib_feeds)
        search = search_feeds(calib_part)
        info = _data_info("held-out calibration", read, calib_part, held_out, len(held_out), False, calibrates,
                          len(search))
        return RunData(held_out, calib_part, search, info)
    feeds, choice = synthesized_feeds(loaded.path if loaded.path is not None else model, model, shape_map, seed)
    info = _data_info("synthetic", read, feeds, feeds, 0, synthetic, calibrates, 0, choice)
    info["seed"] = seed
    return RunData(feeds, [], [], info)


def synthesized_feeds(source, model, shape_map: dict[str, tuple[int, ...]], seed: int,
                      count: int = SYNTHETIC_FEEDS) -> tuple[list[Feed], ShapeChoice]:
    """`count` generated feeds on shapes the input model runs on (graphopt.shape_search: `--shape`
    as given, symbolic dims found by running `source`), and how they were chosen."""
    choice = choose_shapes(source, model, shape_map, seed)
    # static inputs keep their declared shapes (synthesize_feeds checks those), the rest are set
    sized = {name: shape for name, shape in choice.shapes.items() if name in shape_map or name in choice.resolved}
    return synthesize_feeds(model, count, sized, seed), choice


def _data_info(verify: str, read: dict[str, int], calibration: Sequence[Feed], verification: Sequence[Feed],
               held_out: int, synthetic_opt_in: bool, calibrates: bool, searched: int,
               shapes: ShapeChoice | None = None) -> dict[str, Any]:
    """The report's "data" entry, with the summary line the CLI prints. `shapes`: how synthesized
    feeds got their shapes (graphopt.shape_search); the summary names them when a search chose."""
    calib_from = "calib" if read["calib_feeds_read"] else verify
    info = {"verify": verify, "calibration": calib_from, "synthetic": verify == "synthetic", **read,
            "calibration_feeds": len(calibration), "verification_feeds": len(verification),
            "held_out": held_out, "calibration_samples": _samples(calibration),
            "verification_samples": _samples(verification), "count": len(verification),
            "search": "calibration" if searched else "verification",
            "search_feeds": searched or len(verification), "warnings": []}
    cal, ver = _count(calibration), _count(verification)
    if verify == "held-out calibration":
        line = f"{read['calib_feeds_read']} feeds read from --calib: {cal} calibrate, {ver} held out to verify"
    elif calib_from == "calib":
        line = f"{cal} read from --calib calibrate; {ver} read from --data verify"
    else:
        where = "read from --data" if verify == "data" else "synthesized"
        line = f"{ver} {where} verify" + ("; lossy passes calibrate and size themselves on them too"
                                          if calibrates else "")
    if calibrates and searched:
        line += f"; lossy passes size themselves on {searched} of the calibration feeds"
    if shapes is not None:
        info["shapes"] = {name: list(shape) for name, shape in shapes.shapes.items()}
        if shapes.searched:
            info["shape_search"] = shapes.report()
            line += (f"; shapes {shapes.described()} (symbolic dims {shapes.chosen}, found by running the "
                     f"input model: {shapes.tried} tried; --shape NAME=DIMS sets them)")
    info["summary"] = f"data: {line}"
    if verify == "synthetic" and synthetic_opt_in:
        info["warnings"].append("calibrated and verified on synthetic inputs: nothing was checked on real data")
    if synthetic_opt_in and Path(SYNTHETIC).exists():
        info["warnings"].append(f"--calib {SYNTHETIC} means generated inputs; write ./{SYNTHETIC} for the "
                                "file or directory of that name")
    return info


def _count(feeds: Sequence[Feed]) -> str:
    return f"{len(feeds)} feed{'' if len(feeds) == 1 else 's'} ({_samples(feeds)} samples)"


def _samples(feeds: Sequence[Feed]) -> int:
    """Samples in the feeds: each feed's first axis (its batch), 1 for scalar feeds."""
    return count_samples(feeds)


def _load(source, model) -> Sequence[Feed]:
    if isinstance(source, (str, os.PathLike)):
        return load_feeds(source, model)
    feeds = source if isinstance(source, LazyFeeds) else [dict(feed) for feed in source]
    if not feeds:
        raise InputError("data holds no feeds")
    specs = input_specs(model)
    for i, feed in enumerate(feeds):
        validate_feed(feed, specs, f"feed {i}")
    return feeds
