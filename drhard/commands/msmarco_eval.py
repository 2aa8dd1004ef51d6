"""Evaluate a run on MS MARCO: ``python msmarco_eval.py REF RUN [K|doc]``.

Prints exactly what the official MS MARCO script prints::

    Eval Started
    #####################
    MRR @10: 0.3404237731386721
    QueriesRanked: 6980
    #####################

``K`` (default 10) is the MRR cut-off; ``doc`` means K=100 with ``D``-prefixed
document ids in both files (official doc qrels and cvt_back'd doc runs).  For
preprocess files (offsets, no ``D``) pass ``100``, as the DRhard README does.

Relevance is the official script's: every qrels line is relevant, grade 0
included, so graded qrels (TREC DL ``2019qrels-pass.txt``, the preprocess test
qrels made from it) give the official number; a one-line note on
stderr says when the qrels hold grade-0 lines.  ``--min_rel G`` (opt-in) makes
only grades >= G relevant, for MRR and recall alike.

Extra measures are opt-in, so the default output stays the official one:
``--recall 100`` (trec_eval recall.100, relevance as for MRR), ``--ndcg`` (TREC
DL NDCG@10, trec_eval ndcg_cut.10 with -c; always graded).  See
drhard/metrics.py for the exact semantics.  Warnings (a run whose ids do not
match the qrels') go to stderr.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..cli import file_path, int_at_least, run
from ..io import DataError
from ..metrics import (DEFAULT_K, DOC_K, evaluate, format_report, id_scheme_warnings, read_qrels, read_run,
                       zero_grade_lines)


def cutoff(value: str):
    if value == "doc":
        return value
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'doc', got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'doc', got {value!r}")
    return k


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        usage="msmarco_eval.py <reference ranking> <candidate ranking> [MaxMRRRank or doc] [options]",
        description="MS MARCO MRR@K (official output), optionally Recall@K and TREC DL NDCG@10.")
    p.add_argument("reference", type=file_path,
                   help="qrels: 'qid 0 pid rel' (MS MARCO, TREC, or a preprocess folder's offset qrels)")
    p.add_argument("candidate", type=file_path, help="run: 'qid pid rank' or TREC 'qid Q0 pid rank score tag'")
    p.add_argument("max_mrr_rank", nargs="?", type=cutoff, default=DEFAULT_K,
                   help="MRR cut-off K (default 10), or 'doc' for K=100 with D-prefixed ids")
    p.add_argument("--recall", type=int_at_least(1), nargs="+", default=[], metavar="K",
                   help="also print trec_eval recall@K (e.g. --recall 100)")
    p.add_argument("--ndcg", action="store_true", help="also print TREC DL NDCG@10 (trec_eval ndcg_cut.10, -c)")
    p.add_argument("--min_rel", type=int, default=None,
                   help="only grades >= MIN_REL are relevant for MRR and recall (default: every qrels line, "
                        "grade 0 included, as the official script)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    doc = args.max_mrr_rank == "doc"
    k = DOC_K if doc else args.max_mrr_rank
    print("Eval Started", flush=True)
    qrels = read_qrels(args.reference, doc=doc)
    run_ = read_run(args.candidate, doc=doc)
    if not set(qrels) & set(run_):
        raise DataError(f"{args.candidate}: no query of the run is in the qrels {args.reference} "
                        "(are you scoring the evaluation set, with the same id scheme?)")
    zeros = zero_grade_lines(qrels)
    if zeros and args.min_rel is None:
        print(f"note: {args.reference} holds {zeros} lines of grade 0; MRR"
              f"{' and recall' if args.recall else ''} count them as relevant, as the official script does"
              f"{' (NDCG uses the grades)' if args.ndcg else ''}; --min_rel 1 (or 2) counts graded relevance only",
              file=sys.stderr)
    for msg in id_scheme_warnings(qrels, run_, k, args.min_rel, args.reference, args.candidate):
        print(f"WARNING: {msg}", file=sys.stderr)
    metrics = evaluate(qrels, run_, k, args.min_rel, recall_at=args.recall, ndcg=args.ndcg)
    sys.stdout.write(format_report(metrics))
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
