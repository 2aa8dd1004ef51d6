"""star/inference.py, star/prepare_hardneg.py and adore/inference.py end to end, through subprocess,
on a toy preprocess dir and a tiny random model; runs checked against a brute-force ranking."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drhard.io import (TokenCache, read_offset_qrels, read_rank, save_offset_map, token_memmap_path, token_prefix,
                       write_meta)
from drhard.model import build_tiny_roberta
from tinyprep import spread
from drhard.retrieval import hard_negatives

REPO = Path(__file__).resolve().parents[1]
N_PASSAGES, DIM = 40, 24
N_QUERIES = {"train": 9, "dev": 6}




def write_tokens(folder, name, n, width, rng):
    prefix = token_prefix(str(folder), name)
    ids = np.zeros((n, width), dtype=np.int32)
    lengths = rng.integers(4, width + 1, size=n)
    for i, ln in enumerate(lengths):
        ids[i, 0], ids[i, ln - 1] = 0, 2
        ids[i, 1:ln - 1] = rng.integers(3, 1000, size=ln - 2)
    ids.tofile(token_memmap_path(prefix))
    np.save(prefix + "_length.npy", lengths)
    write_meta(prefix, n, width)


def make_preprocess(folder):
    """Toy preprocess outputs: passages, train/dev queries, id maps and offset qrels."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    write_tokens(folder, "passages", N_PASSAGES, 30, rng)
    save_offset_map(os.path.join(folder, "pid2offset.pickle"), {1000 + i: i for i in range(N_PASSAGES)})
    for mode, nq in N_QUERIES.items():
        write_tokens(folder, f"{mode}-query", nq, 12, rng)
        save_offset_map(os.path.join(folder, f"{mode}-qid2offset.pickle"), {50 + i: i for i in range(nq)})
        with open(os.path.join(folder, f"{mode}-qrel.tsv"), "w") as f:
            for q in range(nq):
                for p in rng.choice(N_PASSAGES, size=1 + q % 2, replace=False):
                    f.write(f"{q}\t0\t{p}\t1\n")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    pre = root / "data" / "passage" / "preprocess"
    make_preprocess(pre)
    model_dir = root / "data" / "passage" / "trained_models" / "star"
    spread(build_tiny_roberta(hidden=32, layers=2, heads=2, output_embedding_size=DIM, seed=3)).save_pretrained(
        str(model_dir))
    (root / "data" / "passage" / "warmup").symlink_to(model_dir, target_is_directory=True)
    return root, pre, model_dir


def run_script(script, args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(REPO / script)] + [str(a) for a in args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)


def brute_force_rank(p_emb, q_emb, k):
    return np.argsort(-(q_emb @ p_emb.T), axis=1, kind="stable")[:, :k]


def check_rank_file(path, p_emb, q_emb, k):
    ranks = read_rank(str(path))
    want = brute_force_rank(p_emb, q_emb, k)
    assert list(ranks) == list(range(len(q_emb)))
    for q, pids in ranks.items():
        assert pids == want[q].tolist()
    lines = [line.split("\t") for line in open(path).read().splitlines()]
    assert [int(r) for _, _, r in lines[:k]] == list(range(1, k + 1))


@pytest.mark.slow
def test_star_inference_readme_command_verbatim(toy):
    root, pre, model_dir = toy
    res = run_script("star/inference.py", ["--data_type", "passage", "--max_doc_length", "256", "--mode", "dev"],
                     cwd=root)
    assert res.returncode == 0, res.stderr
    out = root / "data" / "passage" / "evaluate" / "star"
    p_emb = np.fromfile(out / "passages.memmap", dtype=np.float32).reshape(N_PASSAGES, DIM)
    q_emb = np.fromfile(out / "dev-query.memmap", dtype=np.float32).reshape(N_QUERIES["dev"], DIM)
    assert np.array_equal(np.fromfile(out / "passages-id.memmap", dtype=np.int32), np.arange(N_PASSAGES))
    assert np.array_equal(np.fromfile(out / "dev-query-id.memmap", dtype=np.int32), np.arange(N_QUERIES["dev"]))
    # default --topk 100 > 40 passages: every passage ranked once per query
    check_rank_file(out / "dev.rank.tsv", p_emb, q_emb, N_PASSAGES)

    # the embeddings are the model's (row 0 encoded alone)
    from drhard.model import RobertaDot
    model = RobertaDot.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor([TokenCache(token_prefix(str(pre), "passages")).get(0, 256)])
    with torch.inference_mode():
        np.testing.assert_allclose(model.encode(ids, torch.ones_like(ids))[0].numpy(), p_emb[0], rtol=1e-4,
                                   atol=1e-5)

    # a second mode reuses the complete passage embeddings
    before = os.stat(out / "passages.memmap").st_mtime_ns
    res = run_script("star/inference.py", ["--data_type", "passage", "--max_doc_length", "256", "--mode", "train",
                                           "--topk", "7"], cwd=root)
    assert res.returncode == 0, res.stderr
    assert os.stat(out / "passages.memmap").st_mtime_ns == before
    assert "reusing" in res.stderr
    q_emb = np.fromfile(out / "train-query.memmap", dtype=np.float32).reshape(N_QUERIES["train"], DIM)
    check_rank_file(out / "train.rank.tsv", p_emb, q_emb, 7)


@pytest.mark.slow
def test_prepare_hardneg_readme_mode_dev_builds_train_negatives(toy):
    root, pre, _ = toy
    out = root / "hn"
    topk = 5
    res = run_script("star/prepare_hardneg.py", ["--data_type", "passage", "--max_query_length", "32",
                                                 "--max_doc_length", "256", "--mode", "dev", "--topk", topk,
                                                 "--output_dir", out], cwd=root)
    assert res.returncode == 0, res.stderr
    assert "MRR @10:" in res.stdout
    p_emb = np.fromfile(out / "passages.memmap", dtype=np.float32).reshape(N_PASSAGES, DIM)
    for mode, nq in N_QUERIES.items():
        q_emb = np.fromfile(out / f"{mode}-query.memmap", dtype=np.float32).reshape(nq, DIM)
        check_rank_file(out / f"{mode}.rank.tsv", p_emb, q_emb, topk + 10)
    hard = json.load(open(out / "hard.json"))
    train_rank = read_rank(str(out / "train.rank.tsv"))
    qrels = read_offset_qrels(str(pre / "train-qrel.tsv"))
    assert sorted(hard) == sorted(str(q) for q in range(N_QUERIES["train"]))
    for q, negs in hard.items():
        rel = set(qrels[int(q)])
        assert len(negs) == topk and not rel & set(negs)
        assert negs == [p for p in train_rank[int(q)] if p not in rel][:topk]


def test_hard_negatives_match_slow_reference():
    rng = np.random.default_rng(1)
    ids = np.stack([rng.permutation(30)[:12] for _ in range(50)])
    ids[3, 8:] = -1  # faiss filler
    qrels = {q: rng.choice(30, size=rng.integers(0, 5), replace=False).tolist() for q in range(50)}
    qrels[7] = ids[7, :11].tolist()  # almost everything retrieved is relevant
    got = hard_negatives(ids, qrels, 6)
    for q in range(50):
        want = [p for p in ids[q] if p >= 0 and p not in qrels[q]][:6]
        assert got[q].tolist() == want


@pytest.mark.slow
def test_adore_inference_and_wrong_dimension(toy, tmp_path):
    root, pre, model_dir = toy
    dmem = tmp_path / "passages.memmap"
    p_emb = np.random.default_rng(5).standard_normal((N_PASSAGES, DIM)).astype(np.float32)
    p_emb.tofile(dmem)
    out = tmp_path / "adore"
    args = ["--model_dir", model_dir, "--output_dir", out, "--preprocess_dir", pre, "--mode", "dev",
            "--dmemmap_path", dmem, "--topk", 10]
    res = run_script("adore/inference.py", args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    q_emb = np.fromfile(out / "dev.qembed.memmap", dtype=np.float32).reshape(N_QUERIES["dev"], DIM)
    check_rank_file(out / "dev.rank.tsv", p_emb, q_emb, 10)

    wrong = tmp_path / "wrong.memmap"
    np.zeros((N_PASSAGES, 2 * DIM), dtype=np.float32).tofile(wrong)  # a 48-dim model's passages
    out2 = tmp_path / "adore-wrong"
    args2 = ["--model_dir", model_dir, "--output_dir", out2, "--preprocess_dir", pre, "--mode", "dev",
             "--dmemmap_path", wrong]
    res = run_script("adore/inference.py", args2, cwd=tmp_path)
    assert res.returncode != 0
    assert "wrong embedding dimension" in res.stderr and "48" in res.stderr and "24" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out2.exists() or not os.listdir(out2)
