"""Write graphopt/passes/catalogue.json (what `graphopt passes` prints) from the pass classes.

Run after changing a pass's summary, options, option notes or module docstring, or a recipe;
tests/test_catalogue.py fails until the file matches the code.
"""

from __future__ import annotations

import json

from graphopt.catalogue import CATALOGUE, build_catalogue


def main() -> None:
    CATALOGUE.write_text(json.dumps(build_catalogue(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {CATALOGUE}")


if __name__ == "__main__":
    main()
