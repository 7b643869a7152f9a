"""The latency check's early stop: timings stop once every verdict against float is decided and
stable, and run the full count on a close call (block medians are synthetic: no wall clock)."""

from graphopt.bench import interleaved_timings
from graphopt.passes.quantize.speed import MIN_PAIRS, Settled


def _timing(blocks: list[float]) -> dict:
    return {"p50_ms": sorted(blocks)[len(blocks) // 2], "blocks": blocks}


def _series(values: list[float], pairs: int) -> list[dict]:
    return [_timing([v] * pairs) for v in values]


def test_clear_verdicts_settle_after_two_agreeing_checks_from_min_pairs():
    settled = Settled(margin=0.03)
    assert not settled(_series([10.0, 6.0, 14.0], MIN_PAIRS - 1))  # too few pairs
    assert not settled(_series([10.0, 6.0, 14.0], MIN_PAIRS))  # first decided check
    assert settled(_series([10.0, 6.0, 14.0], MIN_PAIRS + 1))  # same verdicts again


def test_a_changed_verdict_restarts_the_agreement():
    settled = Settled(margin=0.03)
    assert not settled(_series([10.0, 6.0, 14.0], MIN_PAIRS))
    assert not settled(_series([10.0, 14.0, 14.0], MIN_PAIRS + 1))  # int8 now slower
    assert settled(_series([10.0, 14.0, 14.0], MIN_PAIRS + 2))


def test_a_ratio_near_the_margin_never_settles():
    settled = Settled(margin=0.03)
    for pairs in range(MIN_PAIRS, MIN_PAIRS + 5):
        assert not settled(_series([10.0, 9.8, 14.0], pairs))  # within noise, yet all blocks faster


def test_a_level_candidate_settles_as_within_noise():
    """Block ratios on both sides of 1: more blocks would not call it faster or slower."""
    settled = Settled(margin=0.03)
    level = [9.0, 11.0, 9.5, 10.5, 10.0, 9.0, 11.0]
    float_blocks = [10.0] * len(level)
    checks = [settled([_timing(float_blocks[:n]), _timing(level[:n])]) for n in (MIN_PAIRS, MIN_PAIRS + 1)]
    assert checks == [False, True]


def test_two_faster_candidates_must_be_told_apart():
    settled = Settled(margin=0.03)
    for pairs in range(MIN_PAIRS, MIN_PAIRS + 4):
        assert not settled(_series([10.0, 7.0, 7.05], pairs))  # both faster, tied with each other
    separated = Settled(margin=0.03)
    assert not separated(_series([10.0, 7.0, 5.0], MIN_PAIRS))
    assert separated(_series([10.0, 7.0, 5.0], MIN_PAIRS + 1))


class _Instant:
    def __init__(self):
        self.calls = 0

    def run(self, outputs, feed):
        self.calls += 1


def test_interleaved_timings_stop_when_settled_and_not_before():
    sessions = [_Instant(), _Instant()]
    asked = []

    def settled(timings):
        asked.append(len(timings[0]["blocks"]))
        return len(timings[0]["blocks"]) == 4

    timings = interleaved_timings(sessions, {}, runs=30, block=3, warmup=1, settled=settled)
    assert [t["runs"] for t in timings] == [12, 12] and asked == [1, 2, 3, 4]
    assert [s.calls for s in sessions] == [13, 13]  # 1 warm-up + 4 blocks of 3
    never = interleaved_timings([_Instant()], {}, runs=9, block=3, warmup=0, settled=lambda t: False)
    assert never[0]["runs"] == 9 and len(never[0]["blocks"]) == 3
