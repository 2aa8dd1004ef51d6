"""Benchmark: our preprocess against a baseline of the original's shape, side by side.

    python bench/preprocess.py                      # 200k passages, ~6k queries, 2 processes
    python bench/preprocess.py --n_passages 20000   # quicker

Generates an MS MARCO passage-layout slice (passages of ~60 words on average, realistic
punctuation, numbers and capitals), then runs, each as its own subprocess:

- ours: ``preprocess.py --threads N`` (whole script: passages + train/dev/test/lead queries);
- baseline, the original's shape: the collection split into N line ranges, one process per
  range calling transformers' ``RobertaTokenizer.encode`` on one text at a time, rows written
  into per-split memmaps one by one, then copied row by row into the final memmap; the
  same for the query files.

It prints wall time, passages/s, peak RSS (sum over the process tree, sampled every 20 ms,
and the largest single process from ``getrusage``), the speed ratio, and checks that both
wrote byte-identical passages/queries memmaps, lengths and qrels.
"""
import argparse
import json
import os
import pickle
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VOCAB = REPO.parent / "shared" / "data" / "roberta-base-tokenizer"

WORDS = ("the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will what about more can who "
         "time people year way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education "
         "definition symptoms treatment average salary temperature population calories protein vitamin pregnancy "
         "mortgage insurance passport recipe chicken weather climate hurricane earthquake photosynthesis mitochondria "
         "constitution amendment congress senator election currency inflation bitcoin software windows android "
         "bluetooth password dermatologist anesthesiologist cardiovascular").split()
NAMES = "John Mary London Paris Texas California Amazon Google Microsoft Einstein Shakespeare Obama".split()


def make_text(rng: random.Random, n_words: int) -> str:
    out = []
    for i in range(n_words):
        r = rng.random()
        if r < 0.06:
            w = rng.choice(NAMES)
        elif r < 0.10:
            w = str(rng.randint(0, 5000)) if rng.random() < 0.7 else f"{rng.uniform(0, 100):.2f}"
        else:
            w = rng.choice(WORDS)
        if i == 0:
            w = w.capitalize()
        out.append(w)
        if rng.random() < 0.08:
            out[-1] += rng.choice([",", ".", ";", ":", "!", "?", "'s", ")"])
    return " ".join(out) + "."


def make_dataset(d: Path, n_passages: int, n_queries: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "collection.tsv", "w", encoding="utf-8") as f:
        for pid in range(n_passages):
            n = max(5, int(rng.gauss(60, 25)))
            f.write(f"{pid}\t{make_text(rng, n)}\n")
    sizes = {"train": n_queries * 2 // 3, "dev": n_queries // 6, "test": 200, "lead": n_queries // 6}
    names = {"train": ("queries.train.tsv", "qrels.train.tsv"), "dev": ("queries.dev.small.tsv", "qrels.dev.small.tsv"),
             "test": ("msmarco-test2019-queries.tsv", "2019qrels-pass.txt"), "lead": ("queries.eval.small.tsv", None)}
    qid = 1
    for mode, (qf, rf) in names.items():
        with open(d / qf, "w", encoding="utf-8") as fq:
            rel = open(d / rf, "w", encoding="utf-8") if rf else None
            for i in range(sizes[mode]):
                qid += rng.randint(1, 5)
                fq.write(f"{qid}\t{make_text(rng, rng.randint(2, 12)).rstrip('.')}?\n")
                if rel and i % 5:  # every fifth query has no judgment
                    sep = " " if mode == "test" else "\t"
                    for _ in range(rng.randint(1, 2)):
                        grade = rng.randint(0, 3) if mode == "test" else 1
                        rel.write(sep.join(map(str, (qid, 0, rng.randrange(n_passages), grade))) + "\n")
            if rel:
                rel.close()


# --------------------------------------------------------------------------- the baseline
def _baseline_split(job):
    """One process of the original's shape: one text at a time, rows copied one by one."""
    vocab, path, out_dir, kind, width, begin, end = job
    from transformers import RobertaTokenizer

    tok = RobertaTokenizer.from_pretrained(vocab, add_prefix_space=True)
    os.makedirs(out_dir, exist_ok=True)
    n = end - begin
    ids_arr = np.memmap(os.path.join(out_dir, "ids.memmap"), shape=(n,), mode="w+", dtype=np.int64)
    tok_arr = np.memmap(os.path.join(out_dir, "token_ids.memmap"), shape=(n, width), mode="w+", dtype=np.int32)
    len_arr = np.memmap(os.path.join(out_dir, "lengths.memmap"), shape=(n,), mode="w+", dtype=np.int32)
    with open(path, encoding="utf-8") as f:
        for idx, line in enumerate(f):
            if idx < begin:
                continue
            if idx >= end:
                break
            cols = line.rstrip("\n").split("\t")
            text = cols[1].rstrip() if kind == "query" else cols[1].rstrip()[:10000]
            ids = tok.encode(text.lower(), add_special_tokens=True, max_length=width, truncation=True)
            row = ids + [0] * (width - len(ids))
            w = idx - begin
            ids_arr[w] = int(cols[0])
            tok_arr[w, :] = row
            len_arr[w] = len(ids)
    ids_arr.flush(), tok_arr.flush(), len_arr.flush()


def _baseline_file(pool, vocab, path, out_prefix, kind, width, threads, keep=None):
    n = sum(1 for _ in open(path, "rb"))
    jobs = [(vocab, path, f"{out_prefix}_split_{i}", kind, width, round(n * i / threads), round(n * (i + 1) / threads))
            for i in range(threads)]
    pool.map(_baseline_split, jobs)
    rows = []
    total = 0
    for j in jobs:
        m = j[6] - j[5]
        ids = np.memmap(os.path.join(j[2], "ids.memmap"), dtype=np.int64, mode="r", shape=(m,))
        keep_mask = [keep is None or int(x) in keep for x in ids]
        total += sum(keep_mask)
        rows.append((j, m, keep_mask))
    out = np.memmap(out_prefix + ".memmap", shape=(total, width), mode="w+", dtype=np.int32)
    lengths, id2offset, idx = [], {}, 0
    for j, m, keep_mask in rows:
        ids = np.memmap(os.path.join(j[2], "ids.memmap"), dtype=np.int64, mode="r", shape=(m,))
        toks = np.memmap(os.path.join(j[2], "token_ids.memmap"), dtype=np.int32, mode="r", shape=(m, width))
        lens = np.memmap(os.path.join(j[2], "lengths.memmap"), dtype=np.int32, mode="r", shape=(m,))
        for k in range(m):
            if not keep_mask[k]:
                continue
            out[idx, :] = toks[k]
            lengths.append(lens[k])
            id2offset[int(ids[k])] = idx
            idx += 1
        shutil.rmtree(j[2])
    out.flush()
    np.save(out_prefix + "_length.npy", np.array(lengths))
    with open(out_prefix + "_meta", "w") as f:
        json.dump({"type": "int32", "total_number": idx, "embedding_size": width}, f)
    return id2offset


def run_baseline(data: Path, out: Path, vocab: str, threads: int, max_seq_length: int, max_query_length: int):
    import multiprocessing

    out.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("fork").Pool(threads) as pool:
        pid2offset = _baseline_file(pool, vocab, str(data / "collection.tsv"), str(out / "passages"),
                                    "passage", max_seq_length, threads)
        with open(out / "pid2offset.pickle", "wb") as f:
            pickle.dump(pid2offset, f, protocol=4)
        for mode, qf, rf in (("train", "queries.train.tsv", "qrels.train.tsv"),
                             ("dev", "queries.dev.small.tsv", "qrels.dev.small.tsv"),
                             ("test", "msmarco-test2019-queries.tsv", "2019qrels-pass.txt"),
                             ("lead", "queries.eval.small.tsv", None)):
            qrels = [line.split() for line in open(data / rf)] if rf else None
            keep = {int(r[0]) for r in qrels} if qrels else None
            qid2offset = _baseline_file(pool, vocab, str(data / qf), str(out / f"{mode}-query"), "query",
                                        max_query_length, threads, keep)
            with open(out / f"{mode}-qid2offset.pickle", "wb") as f:
                pickle.dump(qid2offset, f, protocol=4)
            if qrels:
                with open(out / f"{mode}-qrel.tsv", "w") as f:
                    for q, _, p, r in qrels:
                        f.write(f"{qid2offset[int(q)]}\t0\t{pid2offset[int(p)]}\t{r}\n")


# --------------------------------------------------------------------------- measuring
def measure(cmd, env=None):
    """Run ``cmd``; wall seconds, peak RSS of the whole process tree (MB), largest single process (MB)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with status {proc.returncode}")
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak / 2**20, max(single, before) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_passages", type=int, default=200_000)
    ap.add_argument("--n_queries", type=int, default=6_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max_seq_length", type=int, default=512)
    ap.add_argument("--max_query_length", type=int, default=64)
    ap.add_argument("--vocab", default=str(DEFAULT_VOCAB), help="roberta-style tokenizer dir (vocab.json, merges.txt)")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory, removed afterwards")
    ap.add_argument("--_baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_data", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._baseline:
        run_baseline(Path(a._data), Path(a._out), a.vocab, a.threads, a.max_seq_length, a.max_query_length)
        return
    if not (Path(a.vocab) / "vocab.json").exists():
        raise SystemExit(f"{a.vocab}: no vocab.json (pass --vocab)")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        data = work / "dataset"
        t0 = time.perf_counter()
        make_dataset(data, a.n_passages, a.n_queries)
        nq = sum(1 for f in data.glob("quer*") for _ in open(f)) + sum(1 for _ in open(data / "msmarco-test2019-queries.tsv"))
        print(f"generated {a.n_passages} passages ({(data / 'collection.tsv').stat().st_size / 2**20:.1f} MB), "
              f"{nq} queries in {time.perf_counter() - t0:.1f} s")
        env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
        common = ["--max_seq_length", str(a.max_seq_length), "--max_query_length", str(a.max_query_length),
                  "--threads", str(a.threads)]
        ours = measure([sys.executable, str(REPO / "preprocess.py"), "--data_type", "1", "--data_dir", str(data),
                        "--out_data_dir", str(work / "ours"), "--model_name_or_path", a.vocab] + common, env)
        base = measure([sys.executable, __file__, "--_baseline", "--_data", str(data), "--_out", str(work / "base"),
                        "--vocab", a.vocab] + common, env)
        same = []
        for name in ["passages.memmap", "passages_length.npy", "passages_meta"] + \
                [f"{m}-query{s}" for m in ("train", "dev", "test", "lead") for s in (".memmap", "_length.npy", "_meta")] + \
                [f"{m}-qrel.tsv" for m in ("train", "dev", "test")]:
            same.append((work / "ours" / name).read_bytes() == (work / "base" / name).read_bytes())
            if not same[-1]:
                print(f"DIFFERENT: {name}")
        for name, (wall, tree, single) in (("ours", ours), ("baseline", base)):
            print(f"{name:9s} wall {wall:7.2f} s  {a.n_passages / wall:9.0f} passages/s  "
                  f"peak RSS tree {tree:7.0f} MB  largest process {single:6.0f} MB")
        print(f"speed-up ours / baseline: {base[0] / ours[0]:.2f}x  ({a.threads} processes each, {os.cpu_count()} cores)")
        print(f"outputs byte-identical: {all(same)} ({len(same)} files)")
        if not all(same):
            raise SystemExit(1)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
