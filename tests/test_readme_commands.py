"""The original README's commands, verbatim, on a toy MS MARCO laid out under data/ (CPU).

The data tree is a temporary folder used as the working directory; ``roberta-base``
resolves to ``data/roberta-base`` (a tiny BPE tokenizer), the warmup model is a tiny
random RoBERTa placed at ``data/passage/warmup``.  A second, tuned STAR run on the same
folder checks that training ranks the training positives better than the warmup.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cpu_env
from drhard.io import read_offset_qrels, read_rank
from drhard.model import build_tiny_roberta
from toy_data import make_tiny_tokenizer, make_toy_msmarco

pytestmark = pytest.mark.slow  # subprocesses, kills, resumes, downloads, the README's commands

README_COMMANDS = [
    "python preprocess.py --data_type 0; python preprocess.py --data_type 1",
    "python ./star/prepare_hardneg.py --data_type passage --max_query_length 32 --max_doc_length 256 --mode dev --topk 200",
    "python ./star/train.py --do_train --max_query_length 24 --max_doc_length 120 --preprocess_dir ./data/passage/preprocess --hardneg_path ./data/passage/warmup_retrieve/hard.json --init_path ./data/passage/warmup --output_dir ./data/passage/star_train/models --logging_dir ./data/passage/star_train/log --optimizer_str lamb --learning_rate 1e-4 --gradient_checkpointing --fp16",
    "python ./star/inference.py --data_type passage --max_doc_length 256 --mode dev",
    "python ./msmarco_eval.py ./data/passage/preprocess/dev-qrel.tsv ./data/passage/evaluate/star/dev.rank.tsv",
    "python ./star/inference.py --data_type doc --max_doc_length 512 --mode dev",
    "python ./msmarco_eval.py ./data/doc/preprocess/dev-qrel.tsv ./data/doc/evaluate/star/dev.rank.tsv 100",
    "python ./adore/train.py --metric_cut 200 --init_path ./data/passage/trained_models/star --pembed_path ./data/passage/evaluate/star/passages.memmap --model_save_dir ./data/passage/adore_train/models --log_dir ./data/passage/adore_train/log --preprocess_dir ./data/passage/preprocess --model_gpu_index 0 --faiss_gpu_index 1 2 3",
    "python ./adore/inference.py --model_dir ./data/passage/trained_models/adore-star --output_dir ./data/passage/evaluate/adore-star --preprocess_dir ./data/passage/preprocess --mode dev --dmemmap_path ./data/passage/evaluate/star/passages.memmap",
    "python ./msmarco_eval.py ./data/passage/preprocess/dev-qrel.tsv ./data/passage/evaluate/adore-star/dev.rank.tsv",
    "python ./cvt_back.py --input_dir ./data/passage/evaluate/adore-star/ --preprocess_dir ./data/passage/preprocess --output_dir ./data/passage/official_runs/adore-star --mode dev --dataset passage",
    "python ./msmarco_eval.py ./data/passage/dataset/qrels.dev.small.tsv ./data/passage/official_runs/adore-star/dev.rank.tsv",
]


def run(cmd: str, cwd) -> str:
    """Run one README line (``;``-separated commands allowed) from ``cwd`` with the repository's scripts."""
    out = []
    for part in cmd.split(";"):
        argv = part.split()
        assert argv[0] == "python"
        script = os.path.normpath(os.path.join(REPO, argv[1]))
        env = cpu_env()
        p = subprocess.run([sys.executable, script, *argv[2:]], cwd=cwd, capture_output=True, text=True, env=env)
        assert p.returncode == 0, f"{part}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
        out.append(p.stdout)
    return "".join(out)


def check_official_report(text: str, k: int, n_queries: int) -> float:
    lines = [l for l in text.splitlines() if l.strip()]
    assert lines[0] == "Eval Started" and lines[1] == lines[-1] == "#" * 21
    m = re.fullmatch(rf"MRR @{k}: ([0-9.e-]+)", lines[2])
    assert m, lines
    assert lines[3] == f"QueriesRanked: {n_queries}"
    return float(m.group(1))


def brute_force_mrr(preprocess, evaluate, mode, k=10):
    """MRR@k of <mode> from the written embeddings, computed independently of the scripts."""
    p = np.fromfile(evaluate / "passages.memmap", dtype=np.float32)
    q = np.fromfile(evaluate / f"{mode}-query.memmap", dtype=np.float32)
    dim = p.size // json.loads((preprocess / "passages_meta").read_text())["total_number"]
    p, q = p.reshape(-1, dim), q.reshape(-1, dim)
    rels = read_offset_qrels(str(preprocess / f"{mode}-qrel.tsv"))
    order = np.argsort(-(q @ p.T), axis=1, kind="stable")[:, :k]
    return sum(next((1 / (i + 1) for i, x in enumerate(order[qo]) if x in set(ps)), 0.0)
               for qo, ps in rels.items()) / len(rels)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for kind in ("passage", "doc"):
        make_toy_msmarco(root / "data", kind, n_passages=150, seed=3,
                         n_queries={"train": 60, "dev": 16, "test": 8, "lead": 8})
    tok = make_tiny_tokenizer(root / "data" / "roberta-base")
    warm = root / "data" / "passage" / "warmup"
    build_tiny_roberta(vocab_size=len(json.loads((tok / "vocab.json").read_text())), hidden=32, layers=2,
                       heads=2, pooling="mean").save_pretrained(str(warm), tokenizer_dir=str(tok))
    return root


def test_original_readme_commands_run_verbatim(tree):
    d = tree / "data"
    run(README_COMMANDS[0], tree)
    for kind in ("passage", "doc"):
        assert (d / kind / "preprocess" / "passages.memmap").exists()
    out = run(README_COMMANDS[1], tree)
    assert "MRR @10" in out  # the warmup's dev evaluation
    hard = json.loads((d / "passage" / "warmup_retrieve" / "hard.json").read_text())
    train_rels = read_offset_qrels(str(d / "passage" / "preprocess" / "train-qrel.tsv"))
    assert set(map(int, hard)) >= set(train_rels)  # hard.json covers the TRAIN queries, as STAR needs

    run(README_COMMANDS[2], tree)  # STAR (100 epochs of 1 step; --fp16 falls back to fp32 on CPU)
    models = d / "passage" / "star_train" / "models"
    assert (models / "model.safetensors").exists() and (models / "config.json").exists()
    assert list((d / "passage" / "star_train" / "log").glob("events.out.tfevents*"))
    for kind in ("passage", "doc"):
        shutil.copytree(models, d / kind / "trained_models" / "star")

    run(README_COMMANDS[3], tree)
    n_dev = len(read_offset_qrels(str(d / "passage" / "preprocess" / "dev-qrel.tsv")))
    mrr = check_official_report(run(README_COMMANDS[4], tree), 10, n_dev)
    ev = d / "passage" / "evaluate" / "star"
    assert mrr == pytest.approx(brute_force_mrr(d / "passage" / "preprocess", ev, "dev"), abs=1e-9)
    run(README_COMMANDS[5], tree)
    n_dev_doc = len(read_offset_qrels(str(d / "doc" / "preprocess" / "dev-qrel.tsv")))
    check_official_report(run(README_COMMANDS[6], tree), 100, n_dev_doc)

    run(README_COMMANDS[7], tree)  # ADORE; --faiss_gpu_index 1 2 3 falls back to a CPU index here
    adore = d / "passage" / "adore_train" / "models"
    assert [f"epoch-{i}" for i in range(1, 7)] == sorted(p.name for p in adore.glob("epoch-*"))
    shutil.copytree(adore / "epoch-6", d / "passage" / "trained_models" / "adore-star")
    run(README_COMMANDS[8], tree)
    rank = read_rank(str(d / "passage" / "evaluate" / "adore-star" / "dev.rank.tsv"))
    n_dev_rows = json.loads((d / "passage" / "preprocess" / "dev-query_meta").read_text())["total_number"]
    assert sorted(rank) == list(range(n_dev_rows)) and all(len(v) == 100 for v in rank.values())
    mrr_offsets = check_official_report(run(README_COMMANDS[9], tree), 10, n_dev)
    run(README_COMMANDS[10], tree)
    mrr_official = check_official_report(run(README_COMMANDS[11], tree), 10, n_dev)
    assert mrr_official == pytest.approx(mrr_offsets, abs=1e-12)  # ids converted back faithfully


def test_star_pipeline_ranks_training_positives_better(tree):
    """preprocess -> prepare_hardneg -> STAR (tuned for a tiny model) -> inference -> eval."""
    d = tree / "data" / "passage"
    if not (d / "warmup_retrieve" / "hard.json").exists():
        run("python preprocess.py --data_type 1", tree)
        run(README_COMMANDS[1], tree)
    out = tree / "tuned_star"
    run(f"python ./star/train.py --do_train --max_query_length 24 --max_doc_length 120 "
        f"--preprocess_dir ./data/passage/preprocess --hardneg_path ./data/passage/warmup_retrieve/hard.json "
        f"--init_path ./data/passage/warmup --output_dir {out} --logging_dir {tree}/tuned_log "
        f"--optimizer_str lamb --learning_rate 2e-3 --per_device_train_batch_size 16 --num_train_epochs 15 "
        f"--warmup_steps 5 --save_strategy no", tree)
    for name, model in (("warm", d / "warmup"), ("star", out)):
        run(f"python ./star/inference.py --data_type passage --max_doc_length 120 --mode train "
            f"--model_path {model} --output_dir {tree}/eval_{name}", tree)
    before = brute_force_mrr(d / "preprocess", tree / "eval_warm", "train")
    after = brute_force_mrr(d / "preprocess", tree / "eval_star", "train")
    assert after > before + 0.1, (before, after)
    report = run(f"python ./msmarco_eval.py ./data/passage/preprocess/train-qrel.tsv {tree}/eval_star/train.rank.tsv",
                 tree)
    assert check_official_report(report, 10, len(read_offset_qrels(str(d / "preprocess" / "train-qrel.tsv")))) \
        == pytest.approx(after, abs=1e-9)
