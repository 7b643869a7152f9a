"""How the robustness suite runs.

- The sweep (`@pytest.mark.sweep`, tests/robustness/test_sweep.py) is deselected in the default run;
  `python -m pytest -m sweep` (or GRAPHOPT_SWEEP=1) runs it. At the end it prints what ran:
  models, runs, skips with their reasons. This suite's `slow` test (a 2.4 GB model end to end)
  likewise runs only with `-m slow` (or GRAPHOPT_SLOW=1): it writes 2.4 GB.
- Property tests use the hypothesis profile "graphopt": GRAPHOPT_EXAMPLES generated graphs per
  pass (default 10, derandomized so CI is reproducible); GRAPHOPT_EXAMPLES_RANDOM=1 draws new
  examples each run. No example database is written (nothing lands in the repository).
"""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "graphopt", max_examples=int(os.environ.get("GRAPHOPT_EXAMPLES", "10")), deadline=None,
    derandomize=os.environ.get("GRAPHOPT_EXAMPLES_RANDOM") != "1", database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("graphopt")

SWEEP_LOG = pytest.StashKey[dict]()


def pytest_configure(config):
    config.addinivalue_line("markers", "sweep: the robustness sweep over every model and recipe/pass "
                                       "(minutes; run with -m sweep)")
    config.stash[SWEEP_LOG] = {"checked": 0, "failed": 0, "known": 0, "models": set(), "skipped": {}}


def requested(config, marker: str) -> bool:
    """Heavy tests of this suite run only when asked for: `-m sweep` / `-m slow` (or GRAPHOPT_SWEEP=1,
    GRAPHOPT_SLOW=1)."""
    return marker in (config.getoption("markexpr") or "") or os.environ.get(f"GRAPHOPT_{marker.upper()}") == "1"


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) this suite's heavy tests unless asked for: the default run then says
    "N deselected" once instead of printing an `s` per sweep case."""
    here = os.path.dirname(__file__)
    heavy = [m for m in ("sweep", "slow") if not requested(config, m)]
    dropped = [item for item in items
               if str(item.path).startswith(here) and any(m in item.keywords for m in heavy)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        ids = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in ids]


@pytest.fixture(scope="session")
def sweep_log(request) -> dict:
    return request.config.stash[SWEEP_LOG]


def pytest_terminal_summary(terminalreporter, config):
    log = config.stash.get(SWEEP_LOG, None)
    if not log or not (log["checked"] or log["skipped"]):
        return
    write = terminalreporter.write_line
    write(f"sweep: {len(log['models'])} models checked in {log['checked']} runs ({log['failed']} with broken "
          f"invariants, {log['known']} known failures of passes in progress); {len(log['skipped'])} models skipped:")
    reasons = collections.Counter(_reason_kind(r) for r in log["skipped"].values())
    for reason, count in reasons.most_common():
        write(f"  {count:3d}  {reason}")


def _reason_kind(reason: str) -> str:
    """Group skip reasons: ORT's 'Could not find an implementation for Add(6)' -> the op part."""
    if "Could not find an implementation for" in reason:
        return "ONNX Runtime has no kernel for " + reason.split("implementation for ", 1)[1].split(" node")[0]
    if "Failed to construct locale" in reason:
        return "ONNX Runtime's StringNormalizer needs a locale this machine lacks (en_US.UTF-8)"
    if " failed:" in reason:
        return "ONNX Runtime cannot load the input model: " + reason.split(" failed:", 1)[1][:100]
    return reason[:140]
