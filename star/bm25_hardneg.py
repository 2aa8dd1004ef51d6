"""Mine BM25 negatives into hard.json (for the BM25-Neg warmup of the paper's table).

    python ./star/bm25_hardneg.py --data_type passage --topk 200
    python ./star/train.py --do_train ... --hardneg_path ./data/passage/bm25_retrieve/hard.json

Reads the raw collection and queries (data/<type>/dataset) and the offsets of
data/<type>/preprocess; writes data/<type>/bm25_retrieve/{hard.json,<mode>.rank.tsv}.
"""
import argparse
import logging
import os
import sys

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from drhard.bm25 import mine_bm25_negatives
from drhard.io import DataError, qrel_path, rank_path
from drhard.metrics import evaluate_run, format_report
from drhard.rawdata import parse_data_type


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_type", required=True, type=parse_data_type, help="passage|doc (or 1|0)")
    p.add_argument("--mode", default="train", choices=["train", "dev", "test", "lead"])
    p.add_argument("--topk", type=int, default=200, help="non-relevant passages kept per query")
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--data_dir", default=None, help="default ./data/<type>/dataset")
    p.add_argument("--preprocess_dir", default=None, help="default ./data/<type>/preprocess")
    p.add_argument("--output_dir", default=None, help="default ./data/<type>/bm25_retrieve")
    a = p.parse_args(argv)
    data_dir = a.data_dir or f"./data/{a.data_type}/dataset"
    pre = a.preprocess_dir or f"./data/{a.data_type}/preprocess"
    out = a.output_dir or f"./data/{a.data_type}/bm25_retrieve"
    try:
        mine_bm25_negatives(data_dir, a.data_type, pre, out, mode=a.mode, topk=a.topk, k1=a.k1, b=a.b,
                            threads=a.threads)
        if a.mode != "lead":
            k = 100 if a.data_type == "doc" else 10
            metrics = evaluate_run(qrel_path(pre, a.mode), rank_path(out, a.mode), k=k)
            print(f"BM25 on the {a.mode} queries:")
            print(format_report(metrics))
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
