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

Every program ends with ``sys.exit(run(main))`` (``console()`` of each module of
``drhard.commands``; the README's "Exit statuses" shows this table to users):
``main(argv)`` returns an int (or None for 0) and raises a ``DrhardError``
(``drhard.errors``) or an ``OSError`` for the failures above.  Any other
exception is a bug and keeps its traceback.

The module also holds what every program's command line shares: argparse types
that check ranges at the door (exit 2), the log format, and configurations
declared once as dataclass fields that are also flags (``flag``,
``add_dataclass_flags``, ``from_args``, ``check_flags``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from .errors import DrhardError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """The log format of every command (stderr)."""
    logging.basicConfig(format=LOG_FORMAT, level=level)


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
def check_at_least(flag: str, value, minimum, why: str = ""):
    """``value`` when it is ``>= minimum``, else ``ValueError("argument --flag: must be >= ...")``: the one
    range message of every script (``int_at_least`` and the dataclass checks of star/train.py use it)."""
    if value < minimum:
        raise ValueError(f"argument --{flag}: must be >= {minimum}{why}, got {value}")
    return value


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= minimum``; anything else is a usage error (exit 2).

    ``why`` is appended to the message (``" (<s> and </s>)"``)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{why}, got {number}")
        return number
    parse.__name__ = f"int >= {minimum}"
    return parse


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {value!r}") from None


def finite_float(value: str) -> float:
    """An argparse ``type=``: a finite number (``nan``/``inf`` are usage errors)."""
    number = _float(value)
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def float_at_least(minimum: float) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number ``>= minimum``."""
    def parse(value: str) -> float:
        number = _float(value)
        if not math.isfinite(number) or number < minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}, got {value}")
        return number
    parse.__name__ = f"float >= {minimum:g}"
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


# --------------------------------------------------------------------------- dataclass configurations
# A script whose configuration is a dataclass (adore/train.py, preprocess.py) declares every flag once,
# as a field made by ``flag``; ``add_dataclass_flags`` turns the fields into argparse flags (same name,
# default, help and type) and ``from_args`` builds the dataclass back from the parsed namespace.
def flag(default=dataclasses.MISSING, *, help: str = "", type: Optional[Callable[[str], object]] = None,
         nargs=None, choices=None, cli: bool = True):
    """A dataclass field that is also the command-line flag ``--<field name>``.

    No ``default``: a required flag.  A ``bool`` field defaulting to False is a ``store_true`` switch.
    ``type``: the argparse type (a range-checking one from this module); strings when omitted.
    ``cli=False``: a field that is not a flag (filled in by the script).
    """
    meta = {"help": help, "type": type, "nargs": nargs, "choices": choices, "cli": cli}
    if isinstance(default, list):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """Add one ``--<name>`` flag per field of the dataclass ``cls`` that was declared with ``flag``."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        kwargs = {"help": meta.get("help") or None}
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default_factory() if f.default is dataclasses.MISSING else f.default)
        if default is False and meta.get("type") is None:
            parser.add_argument(f"--{f.name}", action="store_true", **kwargs)
            continue
        kwargs.update({k: meta[k] for k in ("type", "nargs", "choices") if meta.get(k) is not None})
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        parser.add_argument(f"--{f.name}", **kwargs)


def from_args(cls, namespace: argparse.Namespace, **extra):
    """The dataclass ``cls`` from a parsed namespace (its flag fields) plus ``extra`` fields."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", False)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names}, **extra)


def check_flags(config) -> None:
    """Apply each flag field's argparse type to its value: library callers that build the dataclass directly
    get the ranges the parser enforces (``ValueError("argument --flag: ...")``)."""
    for f in dataclasses.fields(config):
        parse = f.metadata.get("type")
        value = getattr(config, f.name)
        if parse is None or value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            try:
                parse(str(item))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"argument --{f.name}: {e}") from None
