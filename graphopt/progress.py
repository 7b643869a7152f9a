"""Progress output for the CLI: one updating line with a bar on a terminal, plain lines otherwise.

Progress messages are plain strings (the API takes any callable); a message that contains a
`done/total` count (e.g. "[3/14] fuse-bn", "calibration chunk 1/2: batch 12/48") is drawn
with a bar for its last count. On a terminal each message overwrites the previous one, so
calibration and benchmarking show live bars; in CI logs (not a TTY) every message is a line.
"""

from __future__ import annotations

import re
import shutil
import sys
from typing import TextIO

_COUNT = re.compile(r"(\d+)/(\d+)")


def bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class TerminalProgress:
    def __init__(self, stream: TextIO | None = None, prefix: str = "graphopt: "):
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open = False

    def __call__(self, message: str) -> None:
        text = self.prefix + message
        counts = _COUNT.findall(message)
        if counts:
            done, total = map(int, counts[-1])
            text = f"{text} {bar(done, total)}"
        if not self.live:
            print(text, file=self.stream, flush=True)
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._open = True

    def close(self) -> None:
        """End the live line so what follows starts on a fresh one."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
