"""Every error a DRhard script reports to its user, in one place.

A ``DrhardError`` is a failure the user can act on (bad input, a model directory
that does not load, a non-finite model, a full disk): scripts print its message as
one ``error:`` line and exit with status 1 (``drhard.cli``).  Anything else that
escapes is a bug and keeps its traceback.

The classes also derive from the built-in exception a caller would expect
(``ValueError`` for bad data, ``FileNotFoundError`` for a missing tokenizer,
``FloatingPointError`` for non-finite numbers), so ``except ValueError`` keeps
working around library calls.
"""
from __future__ import annotations

from typing import Optional


class DrhardError(Exception):
    """A failure reported to the user as one line (no traceback)."""


class DataError(DrhardError, ValueError):
    """Malformed input.  The message names the file (and line where there is one)."""


def data_error(path: str, lineno: Optional[int], msg: str) -> DataError:
    """A ``DataError`` whose message starts with ``path:lineno:`` (or ``path:`` without a line)."""
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    return DataError(f"{where}: {msg}")


class NoSpaceError(DataError):
    """Too little free disk space for an output."""


class ModelLoadError(DrhardError, ValueError):
    """A directory that does not hold a loadable dual encoder."""


class TokenizerNotFound(DrhardError, FileNotFoundError):
    """The tokenizer name is neither a local directory nor resolvable offline."""


class NonFiniteError(DrhardError, FloatingPointError):
    """A loss, an embedding or a weight that is NaN or infinite where it must be finite."""
