"""Progress output: bars for counted steps; in-place updates only on a terminal."""

import io

from graphopt.progress import TerminalProgress, bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_bar_fills_in_proportion():
    assert bar(0, 4, 8) == "[........]" and bar(2, 4, 8) == "[####....]" and bar(9, 4, 8) == "[########]"


def test_plain_stream_gets_one_line_per_message():
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress("[1/4] cleanup")
    progress("computing reference outputs")
    progress.close()
    assert out.getvalue().splitlines() == ["graphopt: [1/4] cleanup [#####...............]",
                                           "graphopt: computing reference outputs"]


def test_terminal_overwrites_the_line_and_closes_it():
    out = FakeTTY()
    progress = TerminalProgress(out)
    progress("calibration chunk 1/2: batch 3/6")
    progress("calibration chunk 1/2: batch 6/6")
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "\n" not in text[:-1]
    assert "[####################]" in text.split("\r")[-1]
