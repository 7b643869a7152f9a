"""Error types that map to graphopt's exit codes.

`InputError` (exit 2): the user gave something unusable (a file that is not ONNX, a
missing external-data file, an unknown pass, a malformed option, feeds that do not
match the model, a malformed tensor, an argument out of range, a model that fails the ONNX
checker). `VerificationError` (exit 1): a pass or the whole run broke the equivalence or
accuracy budget the user asked for. Anything else is a bug in graphopt: the CLI exits 3 and
asks for a rerun with --debug and a report. Every input-caused failure must be an InputError
(one readable line), so exit 3 never means "your file is bad".
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base class of graphopt's own errors; the message is one readable line."""

    exit_code = 3


class InputError(GraphoptError):
    """Bad input or usage: exit code 2."""

    exit_code = 2


class VerificationError(GraphoptError):
    """A structural, numeric or budget check failed: exit code 1."""

    exit_code = 1
