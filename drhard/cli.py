"""How every script ends: one ``error:`` line on stderr and an exit status from one table.

======  =====================================================================
status  meaning
======  =====================================================================
0       success
1       the run failed and said why in one ``error: ...`` line: bad input
        data, a model that does not load, a non-finite loss/model/embedding,
        too little disk space, an output the system refused (read-only
        folder, full disk), a corrupt checkpoint
2       bad command line: an unknown flag, a missing argument, a value out of
        range (argparse's usage message, also one ``error:`` line)
130     interrupted (Ctrl-C / SIGINT); outputs are left as they were
======  =====================================================================

Scripts call ``sys.exit(run(main))``: ``main(argv)`` returns an int (or None for
0) and raises a ``DrhardError`` (``drhard.errors``) or an ``OSError`` for the
failures above.  Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from .errors import DrhardError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def os_error_message(e: OSError) -> str:
    """``path: what the system said`` for an OSError (a read-only folder, a full disk, a missing folder)."""
    path = e.filename if e.filename is not None else ""
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    what = e.strerror or str(e)
    return f"{path}: {what}" if path else what


def report(message: str) -> None:
    """Print the one ``error:`` line (messages are folded onto one line)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` and turn the user-facing failures into the exit statuses of the table above."""
    try:
        rc = main(argv)
    except DrhardError as e:
        report(str(e))
        return EXIT_ERROR
    except OSError as e:
        report(os_error_message(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_OK if rc is None else int(rc)


@contextlib.contextmanager
def naming_output(path: str) -> Iterator[None]:
    """Re-raise an ``OSError`` that carries no file name (ENOSPC at write or fsync) naming ``path``, so
    the one ``error:`` line says which output the system refused."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise


# --------------------------------------------------------------------------- argparse types (exit 2 at the door)
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= minimum``; anything else is a usage error (exit 2)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number
    parse.__name__ = f"int >= {minimum}"
    return parse


def file_path(value: str) -> str:
    """An argparse ``type=`` for an input file: a directory is a usage error (a missing file is the reader's)."""
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a directory, expected a file")
    return value


def dir_path(value: str) -> str:
    """An argparse ``type=`` for a folder (input or output): an existing non-directory is a usage error."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is not a directory")
    return value
