"""A tiny preprocess folder written straight with numpy (no tokenizer), for training tests.

Passage ``p`` holds tokens of its topic ``p % n_topics``; query ``q`` is a few tokens
of its positive passage ``q * stride``, so retrieval is learnable.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import REPO, cpu_env
from drhard.io import save_offset_map, write_token_cache
from drhard.model import build_tiny_roberta


def _write_cache(path: Path, rows, width: int) -> None:
    write_token_cache(str(path), [[0] + list(r)[: width - 2] + [2] for r in rows], width)


def make_tiny_preprocess(root: Path, n_passages: int = 200, n_queries: int = 48, vocab: int = 120,
                         seed: int = 0, hard_per_query: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    pre = root / "preprocess"
    pre.mkdir(parents=True)
    passages = [rng.integers(4, vocab, rng.integers(8, 30)).tolist() for _ in range(n_passages)]
    stride = n_passages // n_queries
    positives = {q: q * stride for q in range(n_queries)}
    queries = [rng.choice(passages[positives[q]], 5).tolist() for q in range(n_queries)]
    _write_cache(pre / "passages", passages, 32)
    _write_cache(pre / "train-query", queries, 12)
    save_offset_map(str(pre / "pid2offset.pickle"), {i: i for i in range(n_passages)})
    save_offset_map(str(pre / "train-qid2offset.pickle"), {1000 + q: q for q in range(n_queries)})
    with open(pre / "train-qrel.tsv", "w") as f:
        for q, p in positives.items():
            f.write(f"{q}\t0\t{p}\t1\n")
    hard = {str(q): [int(x) for x in rng.permutation(n_passages) if x != positives[q]][:hard_per_query]
            for q in range(n_queries)}
    hard_path = root / "hard.json"
    hard_path.write_text(json.dumps(hard))
    init = root / "init"
    build_tiny_roberta(vocab_size=vocab, hidden=32, layers=1, heads=2, pooling="mean").save_pretrained(str(init))
    return {"preprocess": pre, "hard": hard_path, "init": init, "positives": positives, "root": root}


def run_script(script: str, *args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                       env=cpu_env(), cwd=kw.get("cwd", REPO))
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def popen_script(script: str, *args, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=cpu_env(), cwd=cwd)


def spread(model, std=0.5, seed=0):
    """Large random weights: at the usual init scale a tiny model maps every text to nearly the same
    vector, and a ranking of near-ties would test nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std, generator=g)
    return model.eval()
