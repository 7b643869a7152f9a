"""`python -m graphopt ...`: the same command line as `graphopt ...`."""

import sys

from graphopt.cli import main

sys.exit(main())
