"""graphopt's pass library; importing it registers every pass by name (one module per line)."""

from graphopt.passes import cleanup  # noqa: F401
from graphopt.passes import folding  # noqa: F401
from graphopt.passes import fusion  # noqa: F401
from graphopt.passes import normalization  # noqa: F401
from graphopt.passes import opset  # noqa: F401
from graphopt.passes import ort_fusions  # noqa: F401
from graphopt.passes import prune  # noqa: F401
from graphopt.passes import quantize  # noqa: F401
from graphopt.passes import prune_nm  # noqa: F401
from graphopt.passes import prune_channels  # noqa: F401
from graphopt.passes import lowrank  # noqa: F401
from graphopt.passes import tucker  # noqa: F401
