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

Extra measures are opt-in, so the default output stays the official one:
``--recall 100`` (trec_eval recall.100), ``--ndcg`` (TREC DL NDCG@10,
trec_eval ndcg_cut.10 with -c); ``--min_rel`` is the lowest relevant grade for
MRR and recall (default 1).  See drhard/metrics.py for the exact semantics.
Warnings (a run whose ids do not match the qrels') go to stderr.
"""
import argparse
import sys

from drhard.io import DataError
from drhard.metrics import DEFAULT_K, DOC_K, evaluate, format_report, id_scheme_warnings, read_qrels, read_run


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        usage="msmarco_eval.py <reference ranking> <candidate ranking> [MaxMRRRank or doc] [options]",
        description="MS MARCO MRR@K (official output), optionally Recall@K and TREC DL NDCG@10.")
    p.add_argument("reference", help="qrels: 'qid 0 pid rel' (MS MARCO, preprocess <mode>-qrel.tsv or TREC)")
    p.add_argument("candidate", help="run: 'qid pid rank' or TREC 'qid Q0 pid rank score tag'")
    p.add_argument("max_mrr_rank", nargs="?", type=cutoff, default=DEFAULT_K,
                   help="MRR cut-off K (default 10), or 'doc' for K=100 with D-prefixed ids")
    p.add_argument("--recall", type=int, nargs="+", default=[], metavar="K",
                   help="also print trec_eval recall@K (e.g. --recall 100)")
    p.add_argument("--ndcg", action="store_true", help="also print TREC DL NDCG@10 (trec_eval ndcg_cut.10, -c)")
    p.add_argument("--min_rel", type=int, default=1,
                   help="lowest grade that counts as relevant for MRR and recall (default 1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    doc = args.max_mrr_rank == "doc"
    k = DOC_K if doc else args.max_mrr_rank
    print("Eval Started", flush=True)
    try:
        qrels = read_qrels(args.reference, doc=doc)
        run = read_run(args.candidate, doc=doc)
        if not set(qrels) & set(run):
            raise DataError(f"{args.candidate}: no query of the run is in the qrels {args.reference} "
                            "(are you scoring the evaluation set, with the same id scheme?)")
        for msg in id_scheme_warnings(qrels, run, k, args.min_rel, args.reference, args.candidate):
            print(f"WARNING: {msg}", file=sys.stderr)
        metrics = evaluate(qrels, run, k, args.min_rel, recall_at=args.recall, ndcg=args.ndcg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_report(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
