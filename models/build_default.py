"""``python -m models.build_default [PATH]``: (re)write ``models/default.onnx``.

The builder itself is ``models.default.build_default``; this module is only the
command-line entry point (importing it from ``models`` would shadow that function).
"""

from __future__ import annotations

import sys

from models.default import write_default


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = write_default(argv[0] if argv else None)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
