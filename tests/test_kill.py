"""SIGKILL a real preprocess.py / star/inference.py at a random point of its work, rerun it, and get
outputs byte-identical to an uninterrupted run.

The kill time is drawn from the seed within the measured working time of the uninterrupted run
(from the moment it starts writing: the staging folder of preprocess, the output folder of
inference, to its exit), so kills land in tokenization, encoding, search or the final renames.
"""
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from drhard.io import save_offset_map, write_token_cache
from drhard.model import build_tiny_roberta
from tinyprep import popen_script, run_script
from toy_data import make_tiny_tokenizer, make_toy_msmarco

pytestmark = pytest.mark.slow  # subprocesses, kills, resumes, downloads, the README's commands

SEEDS = [0, 1, 2]


def visible_files(folder: Path) -> dict:
    """name -> bytes of every output file (hidden temporary names of killed writers left out)."""
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))
            if not n.startswith(".") and (folder / n).is_file()}


def timed_run(script, args, marker: Path):
    """Run to completion; returns seconds from ``marker`` appearing to the exit."""
    proc = popen_script(script, *args)
    while not marker() and proc.poll() is None:
        time.sleep(0.005)
    t0 = time.time()
    assert proc.wait() == 0, f"{script} failed"
    return time.time() - t0


def kill_during_work(script, args, marker, delay):
    """Start ``script``; SIGKILL it ``delay`` seconds after ``marker()`` turns true. True when it was killed."""
    proc = popen_script(script, *args)
    t_end = time.time() + 120
    while not marker():
        if proc.poll() is not None or time.time() > t_end:
            proc.kill()
            pytest.fail(f"{script} ended before its work started")
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    proc.kill()
    proc.wait()
    return running


def draw_delay(seed, work_seconds):
    return random.Random(seed).uniform(0.05, 0.75) * work_seconds


def kill_and_rerun(script, args, out: Path, marker, delay):
    """Kill a run of ``script`` into ``out`` after ``delay`` s of work, then rerun it to completion.

    On a busy machine a run can be faster than the measured one and end before the kill; it is
    then started afresh with half the delay (a finished run would test nothing).
    """
    for _ in range(5):
        if kill_during_work(script, args, marker, delay):
            break
        shutil.rmtree(out)
        delay /= 2
    else:
        pytest.fail(f"{script} always finished before the kill")
    run_script(script, *args)


# --------------------------------------------------------------------------- preprocess.py
@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("killprep")
    data = make_toy_msmarco(root / "data", "passage", n_passages=30000,
                            n_queries={"train": 3000, "dev": 500, "test": 50, "lead": 200})
    tok = make_tiny_tokenizer(root / "tok")
    full = root / "full"

    def args(out):
        return ["--data_dir", data, "--out_data_dir", out, "--model_name_or_path", tok, "--max_seq_length", 64,
                "--max_query_length", 16, "--threads", 2]

    work = timed_run("preprocess.py", args(full), lambda: full.is_dir() and any(
        n.startswith(".preprocess.tmp-") for n in os.listdir(full)))
    return {"root": root, "args": args, "full": full, "work": work}


def _manifest_core(folder: Path) -> dict:
    man = json.loads((folder / "preprocess_manifest.json").read_text())
    return {k: man[k] for k in ("tokenizer", "rows", "qrel_lines", "inputs", "pad_token_id", "data_type", "files",
                                "input_sha256", "extra_columns")}


@pytest.mark.parametrize("seed", SEEDS)
def test_preprocess_killed_then_rerun_is_byte_identical(prep, seed):
    out = prep["root"] / f"killed-{seed}"
    marker = lambda: out.is_dir() and any(n.startswith(".preprocess.tmp-") for n in os.listdir(out))  # noqa: E731
    kill_and_rerun("preprocess.py", prep["args"](out), out, marker, draw_delay(seed, prep["work"]))
    got, want = visible_files(out), visible_files(prep["full"])
    assert got.keys() == want.keys()
    for name in want:
        if name != "preprocess_manifest.json":  # it holds the run time and command
            assert got[name] == want[name], name
    assert _manifest_core(out) == _manifest_core(prep["full"])
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # the killed run's staging folder is gone


# --------------------------------------------------------------------------- preprocess.py killed inside its commit
# Runs preprocess.py with its renames of the commit interrupted by SIGKILL: after `point` renames,
# or ("after") once every file is in place but the commit marker is not yet removed.
COMMIT_KILLER = r"""
import os, runpy, signal, sys
import drhard.preprocess as pp
point = sys.argv.pop(1)
real_move, real_fsync, moved, synced = pp._move, pp._fsync_dir, [0], [0]
def move(src, dst):
    if point != "after" and moved[0] == int(point):
        os.kill(os.getpid(), signal.SIGKILL)
    real_move(src, dst)
    moved[0] += 1
def fsync_dir(path):
    real_fsync(path)
    synced[0] += 1
    if point == "after" and synced[0] == 2:  # 1: marker written, 2: every file moved
        os.kill(os.getpid(), signal.SIGKILL)
pp._move, pp._fsync_dir = move, fsync_dir
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def commit(tmp_path_factory):
    """An output folder of dataset A, and the uninterrupted run of dataset B (the killed runs write B over A)."""
    root = tmp_path_factory.mktemp("killcommit")
    tok = make_tiny_tokenizer(root / "tok")
    data = {s: make_toy_msmarco(root / f"data{s}", "passage", n_passages=300, seed=s) for s in (1, 2)}

    def args(s, out):
        return ["--data_dir", data[s], "--out_data_dir", out, "--model_name_or_path", tok, "--max_seq_length", 32,
                "--max_query_length", 12, "--threads", 1]

    run_script("preprocess.py", *args(1, root / "a"))
    run_script("preprocess.py", *args(2, root / "b"))
    return {"root": root, "args": args}


@pytest.mark.parametrize("point", ["0", "3", "19", "23", "after", "stage gone"])
def test_preprocess_killed_inside_its_commit(commit, point):
    import subprocess
    import sys

    from drhard.io import DataError, TokenCache, read_meta
    from tinyprep import REPO

    root = commit["root"]
    out = root / f"killed-{point}"
    shutil.copytree(root / "a", out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    kill_at = "5" if point == "stage gone" else point
    p = subprocess.run([sys.executable, "-c", COMMIT_KILLER, kill_at, str(REPO / "preprocess.py"),
                        *map(str, commit["args"](2, out))], env=env, cwd=REPO, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-3000:]
    mixed = visible_files(out)
    a, b = visible_files(root / "a"), visible_files(root / "b")
    if point not in ("0", "after"):  # some files of each run
        assert any(mixed[n] == a[n] != b[n] for n in a) and any(mixed[n] == b[n] != a[n] for n in b)
    # every reader refuses the folder
    for reader in (lambda: TokenCache(str(out / "train-query")), lambda: TokenCache(str(out / "passages")),
                   lambda: read_meta(str(out / "passages"))):
        with pytest.raises(DataError, match="interrupted preprocess.py commit left a mixed set"):
            reader()
    if point == "stage gone":  # the staged files are lost: the rerun removes the mixed set and rebuilds it
        for n in os.listdir(out):
            if n.startswith(".preprocess.tmp-"):
                shutil.rmtree(out / n)
    run_script("preprocess.py", *commit["args"](2, out))
    got = visible_files(out)
    assert got.keys() == b.keys()
    for name in b:
        if name != "preprocess_manifest.json":
            assert got[name] == b[name], name
    assert _manifest_core(out) == _manifest_core(root / "b")
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    assert len(TokenCache(str(out / "train-query"))) > 0


# --------------------------------------------------------------------------- star/inference.py
@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    root = tmp_path_factory.mktemp("killinf")
    rng = np.random.default_rng(0)
    pre = root / "pre"
    pre.mkdir()

    def rows(n, width):
        return [[0] + rng.integers(4, 600, rng.integers(4, width - 1)).tolist() + [2] for _ in range(n)]

    write_token_cache(str(pre / "passages"), rows(2000, 64), 64)
    write_token_cache(str(pre / "dev-query"), rows(150, 16), 16)
    save_offset_map(str(pre / "pid2offset.pickle"), {i: i for i in range(2000)})
    model = root / "model"
    build_tiny_roberta(vocab_size=600, hidden=32, layers=2, heads=2, seed=5).save_pretrained(str(model))

    def args(out):
        return ["--data_type", "passage", "--mode", "dev", "--max_doc_length", 64, "--max_query_length", 16,
                "--eval_batch_size", 32, "--topk", 50, "--no_cuda", "--model_path", model, "--preprocess_dir", pre,
                "--output_dir", out]

    full = root / "full"
    work = timed_run("star/inference.py", args(full), full.is_dir)
    return {"root": root, "args": args, "full": full, "work": work}


@pytest.mark.parametrize("seed", SEEDS)
def test_star_inference_killed_then_rerun_is_byte_identical(inference, seed):
    out = inference["root"] / f"killed-{seed}"
    kill_and_rerun("star/inference.py", inference["args"](out), out, out.is_dir, draw_delay(seed, inference["work"]))
    got, want = visible_files(out), visible_files(inference["full"])
    assert got.keys() == want.keys()
    manifest = "star-inference-dev.manifest.json"
    for name in want:
        if name != manifest:  # it holds the time and the output folder's path
            assert got[name] == want[name], name
    man = json.loads(got[manifest])
    assert {k: v["sha256"] for k, v in man["outputs"].items()} == \
        {k: v["sha256"] for k, v in json.loads(want[manifest])["outputs"].items()}


# --------------------------------------------------------------------------- what a rerun may trust
def test_rerun_does_not_reuse_embeddings_of_a_rebuilt_preprocess_folder(tmp_path):
    """Same model, rows and max_len, but the token cache was rebuilt (another tokenizer): recompute."""
    import torch

    from drhard.encode import encode_to_memmap
    from drhard.io import TokenCache

    model = build_tiny_roberta(vocab_size=100, hidden=32, layers=1, heads=2).eval()
    prefix, path = str(tmp_path / "passages"), str(tmp_path / "out.memmap")

    def tokens(seed):
        rng = np.random.default_rng(seed)
        write_token_cache(prefix, [[0] + rng.integers(4, 90, 6).tolist() + [2] for _ in range(20)], 10)
        return TokenCache(prefix)

    def encode(cache, out):
        return np.array(encode_to_memmap(model, cache, 10, out, 8, torch.device("cpu"), progress=False))

    first = encode(tokens(0), path)
    rebuilt = tokens(1)
    again = encode(rebuilt, path)
    assert not np.array_equal(first, again)
    np.testing.assert_array_equal(again, encode(rebuilt, str(tmp_path / "fresh.memmap")))
