"""Tokenize MS MARCO into DRhard's token-id memmaps (the original's flags and defaults).

    python preprocess.py --data_type 0; python preprocess.py --data_type 1

reads ``./data/{doc,passage}/dataset`` and writes ``./data/{doc,passage}/preprocess``
(``--data_dir`` / ``--out_data_dir`` change that).  ``--model_name_or_path roberta-base``
(the default) is not downloaded: it resolves to ``$DRHARD_TOKENIZER`` or ``./data/roberta-base``;
otherwise pass a local directory with vocab.json and merges.txt.  See drhard/preprocess.py for
the outputs and docs/bad-input.md for what is rejected.

Exit status: 0 done; 1 one ``error:`` line (bad input data, no tokenizer, too little disk
space, an output folder the system refuses); 2 a bad flag (a length below 2, a file where a
folder is expected, ...), before any work.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..cli import add_dataclass_flags, from_args, run, setup_logging
from ..preprocess import PreprocessArgs, preprocess


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(parser, PreprocessArgs)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> PreprocessArgs:
    """The run's settings; a bad flag or a path of the wrong kind is a usage error (exit 2) before any work."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = from_args(PreprocessArgs, parser.parse_args(argv), command=["preprocess.py"] + argv)
    try:
        args.resolve()
    except ValueError as e:
        parser.error(str(e))
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir}: " + ("not a directory" if os.path.exists(args.data_dir)
                                                        else "no such directory"))
    if os.path.exists(args.out_data_dir) and not os.path.isdir(args.out_data_dir):
        parser.error(f"--out_data_dir {args.out_data_dir}: not a directory")
    if os.path.isfile(args.model_name_or_path):
        parser.error(f"--model_name_or_path {args.model_name_or_path}: a file; expected a tokenizer directory")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Errors: a bad flag exits 2 (argparse); bad data, a missing tokenizer, a full disk or an output
    the system refuses raise, and ``drhard.cli.run`` prints them as one ``error:`` line (exit 1)."""
    setup_logging()
    manifest = preprocess(parse_args(argv))
    for name, n in manifest["rows"].items():
        print(f"{name}: {n} rows")
    for name, rec in manifest["extra_columns"].items():
        print(f"{name}: {rec['lines']} line(s) had more tab-separated columns than used; the first columns "
              f"were used, as the original did (first on lines {', '.join(map(str, rec['first_lines']))})")
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
