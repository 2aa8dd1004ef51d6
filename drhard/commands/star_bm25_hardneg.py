"""Mine BM25 negatives into hard.json (for the BM25-Neg warmup of the paper's table).

    python ./star/bm25_hardneg.py --data_type passage --topk 200
    python ./star/train.py --do_train ... --hardneg_path ./data/passage/bm25_retrieve/hard.json

Reads the raw collection and queries (``--data_dir``, default data/<type>/dataset) and the
id maps and qrels of the preprocess folder (``--preprocess_dir``, default data/<type>/preprocess);
writes ``hard.json`` and the ``--mode`` rank file (offsets) into ``--output_dir`` (default
data/<type>/bm25_retrieve) and prints BM25's MRR on the mode's queries.  A data error is one
``error:`` line (exit 1), a bad flag a usage error (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..bm25 import mine_bm25_negatives
from ..cli import int_at_least, run, setup_logging
from ..io import qrel_path, rank_path
from ..metrics import evaluate_run, format_report
from ..rawdata import parse_data_type
from .flags import DataTypeParser, add_mode

DIRS = {"data_dir": ("dataset", ""), "preprocess_dir": ("preprocess", ""), "output_dir": ("bm25_retrieve", "")}


def _data_type(value: str) -> str:
    try:
        return parse_data_type(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = DataTypeParser(DIRS, data_type=_data_type, description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode(parser, default="train")
    parser.add_argument("--topk", type=int_at_least(1), default=200, help="non-relevant passages kept per query")
    parser.add_argument("--k1", type=float, default=0.9)
    parser.add_argument("--b", type=float, default=0.4)
    parser.add_argument("--threads", type=int_at_least(0), default=0, help="0 = all cores")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    a = build_parser().parse_args(argv)
    mine_bm25_negatives(a.data_dir, a.data_type, a.preprocess_dir, a.output_dir, mode=a.mode, topk=a.topk, k1=a.k1,
                        b=a.b, threads=a.threads)
    if a.mode != "lead":
        k = 100 if a.data_type == "doc" else 10
        metrics = evaluate_run(qrel_path(a.preprocess_dir, a.mode), rank_path(a.output_dir, a.mode), k=k)
        print(f"BM25 on the {a.mode} queries:")
        print(format_report(metrics))
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
