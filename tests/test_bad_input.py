"""Bad input, every script: one `error: <file>[:<line>]: ...` line, non-zero exit, nothing written.

One test per row of docs/bad-input.md (parametrized), plus hypothesis properties for the
line readers: a file either parses into the right structure or raises DataError whose
message starts with the file path (and ``:<line>`` of the first bad line).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drhard import io as dio
from drhard import metrics, rawdata
from drhard.dataset import load_hardneg
from drhard.io import DataError
from drhard.model import ModelLoadError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import command, cpu_env  # noqa: E402
from tinyprep import REPO  # noqa: E402

def script(name: str):
    return command(name)


def run_main(name: str, argv, capsys):
    """(exit code, last stderr line) of ``main(argv)``; a library error escaping main is (None, message)."""
    try:
        rc = script(name).main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
        if isinstance(code, str):
            return 1, code
        rc = code
    except (DataError, ModelLoadError) as e:  # scripts whose __main__ wrapper prints `error: ...`
        return None, f"error: {e}"
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def files_under(path: Path):
    return sorted(p.name for p in path.rglob("*") if p.is_file()) if path.exists() else []


def assert_error(rc, msg, path, line=None):
    assert rc != 0, msg
    where = f"{path}:{line}:" if line is not None else f"{path}"
    assert msg.startswith(f"error: {where}"), msg
    assert "\n" not in msg and "Traceback" not in msg


# --------------------------------------------------------------------------- preprocess.py
@pytest.fixture(scope="module")
def raw_passage(tmp_path_factory):
    from toy_data import make_tiny_tokenizer, make_toy_msmarco
    root = tmp_path_factory.mktemp("rawpassage")
    return make_toy_msmarco(root / "data", "passage", n_passages=30, seed=2), make_tiny_tokenizer(root / "tok")


def _set_line(path: Path, n: int, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[n - 1] = new
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("file,edit,line,what", [
    ("collection.tsv", lambda p: _set_line(p, 3, b"2 no tab"), 3, "expected 2 tab-separated columns"),
    ("collection.tsv", lambda p: _set_line(p, 4, b"x3\ttext"), 4, "not an integer"),
    ("collection.tsv", lambda p: _set_line(p, 5, b"4\t\tsecond column empty"), 5, "empty text"),
    ("queries.dev.small.tsv", lambda p: _set_line(p, 2, b"77"), 2, "expected 2 tab-separated columns"),
    ("qrels.train.tsv", lambda p: p.write_text(p.read_text() + "999\t0\t1\t1\n"), None, "has no line in"),
    ("queries.eval.small.tsv", os.remove, None, "missing input files: queries.eval.small.tsv"),
])
def test_preprocess_rejects_raw_dataset_with_one_error_line_exit_1(raw_passage, tmp_path, capsys, file, edit, line,
                                                                   what):
    from drhard.cli import run
    data = tmp_path / "dataset"
    shutil.copytree(raw_passage[0], data)
    edit(data / file)
    out = tmp_path / "out"
    rc = run(script("preprocess.py").main, ["--data_dir", str(data), "--out_data_dir", str(out),
                                            "--model_name_or_path", str(raw_passage[1]), "--threads", "1"])
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    if file == "queries.eval.small.tsv":
        assert_error(rc, msg, data)
    elif line is None:
        assert_error(rc, msg, data / file)
    else:
        assert_error(rc, msg, data / file, line)
    assert what in msg
    assert files_under(out) == []


def test_preprocess_reads_extra_columns_as_the_original(raw_passage, tmp_path, capsys):
    from drhard.cli import run
    data = tmp_path / "dataset"
    shutil.copytree(raw_passage[0], data)
    coll = data / "collection.tsv"
    _set_line(coll, 6, coll.read_bytes().split(b"\n")[5] + b"\tan extra column")
    out = tmp_path / "out"
    rc = run(script("preprocess.py").main, ["--data_dir", str(data), "--out_data_dir", str(out),
                                            "--model_name_or_path", str(raw_passage[1]), "--threads", "1"])
    assert rc == 0
    assert "collection.tsv: 1 line(s) had more tab-separated columns than used" in capsys.readouterr().out
    assert json.loads((out / "preprocess_manifest.json").read_text())["extra_columns"] == {
        "collection.tsv": {"lines": 1, "first_lines": [6]}}


# --------------------------------------------------------------------------- msmarco_eval.py
QRELS = b"1\t0\t10\t1\n2\t0\t20\t1\n"
RUN = b"1\t10\t1\n2\t20\t1\n"


@pytest.mark.parametrize("which,content,line,what", [
    ("qrels", b"1\t0\t10\n", 1, "expected 4 columns"),
    ("qrels", b"1\t0\tx\t1\n", 1, "not an integer"),
    ("qrels", b"1\t0\t10\t1\n1\t0\t10\t0\n", 2, "judged again"),
    ("qrels", b"", None, "empty qrels"),
    ("qrels", b"\xef\xbb\xbf1\t0\t10\t1\n", 1, "byte-order mark"),
    ("qrels", b"1\t0\t10\t1\n2\t0\t2\xff0\t1\n", 2, "UTF-8"),
    ("qrels", b"1\t0\t10\t1\r2\t0\t20\t1\n", 1, "carriage return"),
    ("run", b"1\t10\n", 1, "got 2 columns"),
    ("run", b"1\tx\t1\n", 1, "not an integer"),
    ("run", b"1\t10\t0\n", 1, "not 1-based"),
    ("run", b"1\t10\t1\n1\t10\t1\n", 2, "two passages at rank 1"),
    ("run", b"1\t10\t1\n1\t11\t1\n", 2, "two passages at rank 1"),
    ("run", b"1\t10\t1\n1\t10\t2\n", 2, "twice"),
    ("run", b"1 Q0 10 1 high tag\n", 1, "not a number"),
    ("run", b"", None, "empty run"),
    ("run", b"9\t10\t1\n", None, "no query of the run is in the qrels"),
    ("run", b"\xef\xbb\xbf1\t10\t1\n", 1, "byte-order mark"),
    ("run", b"1\t10\t1\n2\t\xff\t1\n", 2, "UTF-8"),
])
def test_msmarco_eval_rejects(tmp_path, capsys, which, content, line, what):
    q, r = tmp_path / "qrels", tmp_path / "run"
    q.write_bytes(content if which == "qrels" else QRELS)
    r.write_bytes(content if which == "run" else RUN)
    rc, msg = run_main("msmarco_eval.py", [q, r], capsys)
    assert_error(rc, msg, q if which == "qrels" else r, line)
    assert what in msg
    assert "MRR" not in capsys.readouterr().out


@pytest.mark.parametrize("which,content,expect", [
    ("run", b"1\t10\t1\r\n2\t20\t1500\r\n", "MRR @10: 0.5\n"),       # CRLF tolerated, rank > 1000 fine
    ("qrels", b"1\t0\t10\t1\n1\t0\t10\t1\n2\t0\t20\t1\n", "MRR @10: 1.0\n"),  # duplicate judgment kept once
    ("run", b"1\t10\t1\n1\t99\t2\n2\t20\t1\n", "MRR @10: 1.0\n"),  # a passage the qrels never judged
])
def test_msmarco_eval_accepts(tmp_path, capsys, which, content, expect):
    q, r = tmp_path / "qrels", tmp_path / "run"
    q.write_bytes(content if which == "qrels" else QRELS)
    r.write_bytes(content if which == "run" else RUN)
    assert script("msmarco_eval.py").main([str(q), str(r)]) == 0
    assert expect in capsys.readouterr().out


def test_msmarco_eval_doc_mode_needs_d_prefix(tmp_path, capsys):
    q, r = tmp_path / "qrels", tmp_path / "run"
    q.write_bytes(QRELS)
    r.write_bytes(RUN)
    rc, msg = run_main("msmarco_eval.py", [q, r, "doc"], capsys)
    assert_error(rc, msg, q, 1)
    assert "'D' prefix" in msg


# --------------------------------------------------------------------------- cvt_back.py
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.mark.parametrize("content,line,what,pre_fn", [
    (b"0\t1\t1\n0\t2\n", 2, "expected 3 columns", None),
    (b"0\t1\t1\n0\tx\t2\n", 2, "not an integer", None),
    (b"0\t1\t1\n0\t999\t2\n", 2, "passage offset 999 is not in", None),
    (b"0\t1\t1\n99\t9\t2\n", 2, "query offset 99 is not in", None),
    (b"0\t1\t1\r\n", 1, "CRLF", None),
    (b"0\t1\t1\n0\t2\r3\n", 2, "carriage return", None),
    (b"\xef\xbb\xbf0\t1\t1\n", 1, "byte-order mark", None),
    (b"0\t1\t1\n0\t\xff\t2\n", 2, "UTF-8", None),
    (b"", None, "empty rank file", None),
    (b"0\t1\t1\n", None, "not a DRhard id map", lambda p: (p / "pid2offset.pickle").write_bytes(b"garbage")),
    (b"0\t1\t1\n", None, "refusing to load", lambda p: (p / "pid2offset.pickle").write_bytes(pickle.dumps({1: _Evil()}))),
    (b"0\t1\t1\n", None, "share offset", lambda p: (p / "pid2offset.pickle").write_bytes(pickle.dumps({1: 1, 2: 1}))),
    (b"0\t1\t1\n", None, "expected a dict", lambda p: (p / "train-qid2offset.pickle").write_bytes(pickle.dumps([1]))),
])
def test_cvt_back_rejects(tiny, capsys, monkeypatch, content, line, what, pre_fn):
    monkeypatch.chdir(tiny["root"])
    inp = tiny["root"] / "in"
    inp.mkdir()
    (inp / "train.rank.tsv").write_bytes(content)
    if pre_fn:
        pre_fn(tiny["preprocess"])
    out = tiny["root"] / "out"
    rc, msg = run_main("cvt_back.py", ["--input_dir", inp, "--preprocess_dir", tiny["preprocess"], "--mode", "train",
                                       "--output_dir", out, "--dataset", "passage", "--output_format", "both"], capsys)
    path = inp / "train.rank.tsv" if pre_fn is None else tiny["preprocess"]
    assert_error(rc, msg, path, line)
    assert what in msg
    assert files_under(out) == []
    assert not (tiny["root"] / "PWNED_BY_PICKLE").exists()


def test_cvt_back_refuses_to_overwrite(tiny, capsys):
    inp, out = tiny["root"] / "in", tiny["root"] / "out"
    inp.mkdir()
    out.mkdir()
    (inp / "train.rank.tsv").write_text("0\t1\t1\n")
    (out / "train.rank.tsv").write_text("keep\n")
    rc, msg = run_main("cvt_back.py", ["--input_dir", inp, "--preprocess_dir", tiny["preprocess"], "--mode", "train",
                                       "--output_dir", out, "--dataset", "passage"], capsys)
    assert rc != 0 and "already exists" in msg
    assert (out / "train.rank.tsv").read_text() == "keep\n"


# --------------------------------------------------------------------------- star/train.py
def star_train(t, capsys, *extra):
    return run_main("star/train.py", ["--do_train", "--max_query_length", 8, "--max_doc_length", 16,
                                      "--preprocess_dir", t["preprocess"], "--hardneg_path", t["hard"],
                                      "--init_path", t["init"], "--output_dir", t["root"] / "out",
                                      "--logging_dir", t["root"] / "log", "--max_steps", 1,
                                      "--per_device_train_batch_size", 4, "--report_to", "none", *extra], capsys)


HARD_CASES = [
    (b'{"x": [1, 2]}', None, "is not a query offset"),
    (b'{"-1": [1, 2]}', None, "is not a query offset"),
    (b'{"0": 5}', None, "expected a list"),
    (b'{"0": [true]}', None, "expected a list"),
    (b'{"0": [1.5]}', None, "expected a list"),
    (b'{"0": [100000]}', None, "outside 0..199"),
    (b'{"0": [-1]}', None, "outside 0..199"),
    (b'{"4800": [1]}', None, "not a row of the query memmap"),
    (b'{"0": [1], "0": [2]}', None, "appears twice"),
    (b'{"0": [1], "00": [2]}', None, "again"),
    (b'{"0": [1, 2],\n "1": [3,\n}', 3, "not valid JSON"),
    (b'[1, 2]', None, "expected a JSON object"),
    (b'\xef\xbb\xbf{"0": [1]}', 1, "byte-order mark"),
    (b'{"0": [1],\n"\xff": [2]}', 2, "UTF-8"),
]


@pytest.mark.parametrize("content,line,what", HARD_CASES)
def test_star_train_rejects_hard_json(tiny, capsys, content, line, what):
    tiny["hard"].write_bytes(content)
    rc, msg = star_train(tiny, capsys)
    assert_error(rc, msg, tiny["hard"], line)
    assert what in msg
    assert not (tiny["root"] / "out").exists()


def test_star_train_rejects_hard_json_missing_a_training_query(tiny, capsys):
    hard = json.loads(tiny["hard"].read_text())
    del hard["3"]
    tiny["hard"].write_text(json.dumps(hard))
    rc, msg = star_train(tiny, capsys)
    assert_error(rc, msg, tiny["hard"])
    assert "1 of 48 training queries have no entry (e.g. [3])" in msg
    assert not (tiny["root"] / "out").exists()


def _np_save(path, arr, **kw):
    with open(path, "wb") as f:
        np.save(f, arr, **kw)


PRE_CASES = [  # (mutation of the preprocess folder, file named, line, message)
    (lambda p: open(p / "passages.memmap", "r+b").truncate(1000), "passages.memmap", None, "truncated"),
    (lambda p: os.remove(p / "passages_length.npy"), "passages_length.npy", None, "missing"),
    (lambda p: os.remove(p / "passages_meta"), "passages_meta", None, "missing"),
    (lambda p: (p / "passages_meta").write_text(json.dumps({"type": "int32", "total_number": 300,
                                                            "embedding_size": 32})), "passages.memmap", None,
     "meta says 300 rows"),
    (lambda p: (p / "passages_meta").write_text("{"), "passages_meta", None, "not a DRhard meta file"),
    (lambda p: _np_save(p / "passages_length.npy", np.ones(5, np.int32)), "passages_length.npy", None,
     "5 lengths for 200 rows"),
    (lambda p: _np_save(p / "passages_length.npy", np.full(200, 99, np.int32)), "passages_length.npy", None,
     "outside 1..32"),
    (lambda p: _np_save(p / "passages_length.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
     "passages_length.npy", None, "not a numpy array"),
    (lambda p: (p / "passages_length.npy").write_bytes(b"garbage"), "passages_length.npy", None,
     "not a numpy array"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("1\t0\t9\t1\r\n"), "train-qrel.tsv", 49, "CRLF"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("1\t0\t9\n"), "train-qrel.tsv", 49, "expected 4 columns"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("1\t0\tp9\t1\n"), "train-qrel.tsv", 49, "not an integer"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("999\t0\t1\t1\n"), "train-qrel.tsv", None, "are not rows of"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("-1\t0\t1\t1\n"), "train-qrel.tsv", None, "are not rows of"),
    (lambda p: open(p / "train-qrel.tsv", "a").write("1\t0\t200\t1\n"), "train-qrel.tsv", None, "are not rows of"),
]


@pytest.mark.parametrize("mutate,name,line,what", PRE_CASES)
def test_star_train_rejects_preprocess_folder(tiny, capsys, mutate, name, line, what):
    mutate(tiny["preprocess"])
    rc, msg = star_train(tiny, capsys)
    assert_error(rc, msg, tiny["preprocess"] / name, line)
    assert what in msg
    assert not (tiny["root"] / "out").exists()


def _gpt2(d: Path):
    from transformers import GPT2Config, GPT2Model
    m = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    m.config.to_json_file(str(d / "config.json"))
    torch.save(m.state_dict(), d / "pytorch_model.bin")


def _bin(obj):
    def write(d: Path):
        buf = io.BytesIO()
        torch.save(obj, buf)
        (d / "pytorch_model.bin").write_bytes(buf.getvalue())
        os.remove(d / "model.safetensors")
    return write


MODEL_CASES = [  # (mutation of the init dir, file named relative to it, message)
    (lambda d: shutil.rmtree(d), "", "model directory not found"),
    (lambda d: os.remove(d / "config.json"), "", "config.json is missing"),
    (lambda d: (d / "config.json").write_text("not json{"), "", "not a transformers config"),
    (lambda d: (d / "config.json").write_text("{}"), "", "not a transformers config"),
    (lambda d: os.remove(d / "model.safetensors"), "", "no model.safetensors or pytorch_model.bin"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"garbage!"), "model.safetensors",
     "not a readable safetensors file"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors", "not a readable safetensors file"),
    (lambda d: (os.remove(d / "model.safetensors"), (d / "pytorch_model.bin").write_bytes(b"garbage")),
     "pytorch_model.bin", "weights-only"),
    (_bin({"x": _Evil()}), "pytorch_model.bin", "unsupported GLOBAL"),
    (_bin([1, 2]), "pytorch_model.bin", "not a state dict"),
    (_bin({"roberta.foo": torch.zeros(1)}), "", "encoder weights missing"),
    (lambda d: (os.remove(d / "model.safetensors"), os.remove(d / "config.json"), _gpt2(d)), "",
     "not a bidirectional encoder"),
]


@pytest.mark.parametrize("mutate,name,what", MODEL_CASES)
def test_star_train_rejects_model_dir(tiny, capsys, mutate, name, what):
    mutate(tiny["init"])
    rc, msg = star_train(tiny, capsys)
    assert_error(rc, msg, tiny["init"] / name if name else tiny["init"])
    assert what in msg
    assert not (tiny["root"] / "out").exists()
    assert not (tiny["root"] / "PWNED_BY_PICKLE").exists() and not Path("PWNED_BY_PICKLE").exists()


# --------------------------------------------------------------------------- star/inference.py, prepare_hardneg.py
@pytest.mark.parametrize("mutate,name,what", [MODEL_CASES[4], MODEL_CASES[-1], MODEL_CASES[8]])
@pytest.mark.parametrize("name_script", ["star/inference.py", "star/prepare_hardneg.py"])
def test_inference_rejects_model_dir(tiny, capsys, mutate, name, what, name_script):
    mutate(tiny["init"])
    out = tiny["root"] / "inf"
    rc, msg = run_main(name_script, ["--data_type", "passage", "--mode", "train", "--model_path", tiny["init"],
                                     "--preprocess_dir", tiny["preprocess"], "--output_dir", out], capsys)
    assert_error(rc, msg, tiny["init"] / name if name else tiny["init"])
    assert what in msg
    assert files_under(out) == []


@pytest.mark.parametrize("mutate,name,line,what", [PRE_CASES[0], PRE_CASES[1], PRE_CASES[3], PRE_CASES[6]])
def test_star_inference_rejects_preprocess_folder(tiny, capsys, mutate, name, line, what):
    mutate(tiny["preprocess"])
    out = tiny["root"] / "inf"
    rc, msg = run_main("star/inference.py", ["--data_type", "passage", "--mode", "train", "--model_path",
                                             tiny["init"], "--preprocess_dir", tiny["preprocess"], "--output_dir", out],
                       capsys)
    assert_error(rc, msg, tiny["preprocess"] / name, line)
    assert what in msg
    assert [f for f in files_under(out) if "passages" in f or "rank" in f] == []


def test_prepare_hardneg_rejects_bad_train_qrels_before_encoding(tiny, capsys):
    PRE_CASES[10][0](tiny["preprocess"])
    out = tiny["root"] / "warm"
    rc, msg = run_main("star/prepare_hardneg.py", ["--data_type", "passage", "--model_path", tiny["init"],
                                                   "--preprocess_dir", tiny["preprocess"], "--output_dir", out], capsys)
    assert_error(rc, msg, tiny["preprocess"] / "train-qrel.tsv", 49)
    assert files_under(out) == []


@pytest.mark.slow
def test_star_inference_cli_prints_one_error_line(tiny):
    """The script's own wrapper: exit 1, one `error:` line, no traceback."""
    os.remove(tiny["init"] / "model.safetensors")
    env = cpu_env()
    p = subprocess.run([sys.executable, str(REPO / "star/inference.py"), "--data_type", "passage", "--mode",
                        "train", "--model_path", str(tiny["init"]), "--preprocess_dir", str(tiny["preprocess"]),
                        "--output_dir", str(tiny["root"] / "inf")], capture_output=True, text=True, env=env)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: {tiny['init']}: no model.safetensors or pytorch_model.bin"


# --------------------------------------------------------------------------- adore/train.py, adore/inference.py
EMB_CASES = [  # (writer of the passage embedding file, message)
    (lambda e: np.random.rand(200, 16).astype(np.float32).tofile(e), "200 passages of dim 16"),
    (lambda e: np.random.rand(150, 32).astype(np.float32).tofile(e), "150 passages of dim 32"),
    (lambda e: np.random.rand(200 * 32 - 3).astype(np.float32).tofile(e), "not a whole number"),
    (lambda e: e.write_bytes(b"x" * 1001), "not a whole number"),
    (lambda e: None, "not found"),
]


@pytest.mark.parametrize("write,what", EMB_CASES)
def test_adore_train_rejects_passage_embeddings(tiny, capsys, write, what):
    emb = tiny["root"] / "p.memmap"
    write(emb)
    save = tiny["root"] / "save"
    rc, msg = run_main("adore/train.py", ["--init_path", tiny["init"], "--pembed_path", emb, "--model_save_dir", save,
                                          "--log_dir", tiny["root"] / "log", "--preprocess_dir", tiny["preprocess"],
                                          "--max_steps", 1, "--per_gpu_batch_size", 4, "--neg_topk", 10], capsys)
    assert_error(rc, msg, emb)
    assert what in msg
    assert not save.exists()


@pytest.mark.parametrize("mutate,name,line,what", [
    (lambda p: open(p / "train-query.memmap", "r+b").truncate(100), "train-query.memmap", None, "truncated"),
    PRE_CASES[13], MODEL_CASES[-1][:2] + (None,) + MODEL_CASES[-1][2:]])
def test_adore_train_rejects_preprocess_and_model(tiny, capsys, mutate, name, line, what):
    emb = tiny["root"] / "p.memmap"
    np.random.rand(200, 32).astype(np.float32).tofile(emb)
    target = tiny["init"] if "bidirectional" in what else tiny["preprocess"]
    mutate(target)
    save = tiny["root"] / "save"
    rc, msg = run_main("adore/train.py", ["--init_path", tiny["init"], "--pembed_path", emb, "--model_save_dir", save,
                                          "--log_dir", tiny["root"] / "log", "--preprocess_dir", tiny["preprocess"],
                                          "--max_steps", 1, "--per_gpu_batch_size", 4, "--neg_topk", 10], capsys)
    assert_error(rc, msg, target / name if name else target, line)
    assert what in msg
    assert not save.exists()


@pytest.mark.parametrize("write,what", EMB_CASES)
def test_adore_inference_rejects_dmemmap(tiny, capsys, write, what):
    emb = tiny["root"] / "p.memmap"
    write(emb)
    out = tiny["root"] / "ainf"
    rc, msg = run_main("adore/inference.py", ["--model_dir", tiny["init"], "--output_dir", out, "--preprocess_dir",
                                              tiny["preprocess"], "--mode", "train", "--dmemmap_path", emb], capsys)
    assert_error(rc, msg, emb)
    assert what in msg
    assert files_under(out) == []


# --------------------------------------------------------------------------- star/bm25_hardneg.py
def _raw_dataset(t):
    data = t["root"] / "dataset"
    data.mkdir()
    (data / "collection.tsv").write_text("".join(f"{p}\tpassage {p} about topic {p % 7}\n" for p in range(200)))
    (data / "queries.train.tsv").write_text("".join(f"{1000 + q}\ttopic {q % 7}\n" for q in range(48)))
    return data


@pytest.mark.parametrize("file,append,line,what", [
    ("collection.tsv", "5\tagain\n", None, "passage id 5 appears twice"),
    ("collection.tsv", "7\n", 201, "expected 2 tab-separated columns"),
    ("collection.tsv", "x7\ttext\n", 201, "not an integer"),
    ("collection.tsv", "201\ttext\r\n", 201, "CRLF"),
    ("queries.train.tsv", "1001\tagain\n", None, "appears twice"),
    ("queries.train.tsv", "\xff", 49, "UTF-8"),
])
def test_bm25_hardneg_rejects_raw_dataset(tiny, capsys, file, append, line, what):
    data = _raw_dataset(tiny)
    if append == "\xff":
        with open(data / file, "ab") as f:
            f.write(b"1\t\xff\n")
    else:
        with open(data / file, "a") as f:
            f.write(append)
    out = tiny["root"] / "bm25"
    rc, msg = run_main("star/bm25_hardneg.py", ["--data_type", "passage", "--data_dir", data, "--preprocess_dir",
                                                tiny["preprocess"], "--output_dir", out, "--topk", 5], capsys)
    assert_error(rc, msg, data / file, line)
    assert what is None or what in msg
    assert files_under(out) == []


def test_bm25_hardneg_rejects_missing_queries(tiny, capsys):
    data = _raw_dataset(tiny)
    lines = (data / "queries.train.tsv").read_text().splitlines(keepends=True)
    (data / "queries.train.tsv").write_text("".join(lines[:-2]))
    out = tiny["root"] / "bm25"
    rc, msg = run_main("star/bm25_hardneg.py", ["--data_type", "passage", "--data_dir", data, "--preprocess_dir",
                                                tiny["preprocess"], "--output_dir", out], capsys)
    assert_error(rc, msg, data / "queries.train.tsv")
    assert "2 train queries" in msg
    assert files_under(out) == []


# --------------------------------------------------------------------------- temp files of concurrent writers
def test_remove_stale_tmp_keeps_live_writers(tmp_path):
    dead = 2 ** 22 + 12345
    while dio.pid_alive(dead):
        dead += 1
    live = os.getppid()
    names = [f".a.tsv.tmp-{dead}", f".b.tsv.tmp-{live}", f".c.tmp-{dead}-x1y2", f".d.old-{live}-q9",
             ".e.tmp-abcdef", "f.tmp-1"]
    for n in names:
        (tmp_path / n).mkdir() if "-x1y2" in n or "old" in n else (tmp_path / n).write_text("x")
    removed = dio.remove_stale_tmp(str(tmp_path))
    assert sorted(removed) == sorted([f".a.tsv.tmp-{dead}", f".c.tmp-{dead}-x1y2"])
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - set(removed))


def test_atomic_dir_temp_names_carry_the_pid(tmp_path):
    with dio.atomic_dir(str(tmp_path / "ckpt")) as tmp:
        assert os.path.basename(tmp).startswith(f".ckpt.tmp-{os.getpid()}-")
        assert dio.remove_stale_tmp(str(tmp_path)) == []  # our own, live: kept
        assert os.path.isdir(tmp)
    assert os.path.isdir(tmp_path / "ckpt")


# --------------------------------------------------------------------------- property-based: the readers
PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

good_token = st.integers(0, 30).map(str)
bad_token = st.sampled_from(["x", "1.5", "", "1e3", "--", "D"])
junk = st.text(alphabet=st.sampled_from(list("ab 1\t\r\ufeff\u00e9\u2028\x0b")), max_size=6)


@st.composite
def line_files(draw, ncols):
    """(bytes, lines as column lists or None for a line with raw junk)."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["good", "good", "good", "cols", "token", "junk", "badbytes"]))
        if kind == "good":
            lines.append(("\t".join(draw(st.lists(good_token, min_size=ncols, max_size=ncols)))).encode())
        elif kind == "cols":
            n = draw(st.integers(1, ncols + 2).filter(lambda k: k != ncols))
            lines.append("\t".join(draw(st.lists(good_token, min_size=n, max_size=n))).encode())
        elif kind == "token":
            cols = draw(st.lists(good_token, min_size=ncols, max_size=ncols))
            cols[draw(st.integers(0, ncols - 1))] = draw(bad_token)
            lines.append("\t".join(cols).encode())
        elif kind == "junk":
            lines.append(draw(junk).encode())
        else:
            lines.append(draw(st.sampled_from([b"1\t\xff\t2", b"\xc3", b"\xed\xa0\x80x"])))
    data = b"\n".join(lines) + (b"\n" if lines and draw(st.booleans()) else b"")
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


def _ref_lines(data: bytes, ncols: int):
    """Reference: (first bad line or None, parsed int rows of good lines); blank lines skipped."""
    rows = []
    raws = data.split(b"\n")
    if raws and raws[-1] == b"":
        raws = raws[:-1]
    for i, raw in enumerate(raws, 1):
        if b"\r" in raw or (i == 1 and raw.startswith(b"\xef\xbb\xbf")):
            return i, rows
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return i, rows
        if not text.strip():
            continue
        cols = text.split()
        ints = [c for j, c in enumerate(cols) if not (ncols == 4 and j == 1)]  # qrels' 2nd column is unused
        if len(cols) != ncols or not all(c.isascii() and c.isdigit() for c in ints):
            return i, rows
        rows.append([int(c) if c.isdigit() else c for c in cols])
    return None, rows


def _check(path, fn, ncols, expected_from_rows, data):
    bad, rows = _ref_lines(data, ncols)
    try:
        got = fn(str(path))
    except DataError as e:
        assert bad is not None, f"rejected a good file: {e}"
        assert str(e).startswith(f"{path}:{bad}: "), (str(e), bad)
        return
    assert bad is None, f"accepted a bad line {bad}: {data!r}"
    assert got == expected_from_rows(rows)


def _expected_qrels(rows):
    out = OrderedDict()
    for q, _, p, r in rows:
        lst = out.setdefault(q, [])
        if r >= 1 and p not in lst:
            lst.append(p)
    return out


def _expected_rank(rows):
    out = OrderedDict()
    for q, p, r in rows:
        out.setdefault(q, []).append((r, p))
    return OrderedDict((q, [p for _, p in sorted(v)]) for q, v in out.items())


@pytest.mark.parametrize("read,ncols,expected", [(dio.read_offset_qrels, 4, _expected_qrels),
                                                  (dio.read_rank, 3, _expected_rank)],
                         ids=["read_offset_qrels", "read_rank"])
@PROPS
@given(draw=st.data())
def test_property_io_line_readers(tmp_path, read, ncols, expected, draw):
    data = draw.draw(line_files(ncols))
    path = tmp_path / "lines.tsv"
    path.write_bytes(data)
    _check(path, read, ncols, expected, data)


def _read_or_refuse(tmp_path, data: bytes, read):
    """``list(read(path))`` of ``data`` written to a file, or None when ``read`` raised a ``DataError`` that
    names the file and one of its lines."""
    path = tmp_path / "raw.tsv"
    path.write_bytes(data)
    try:
        return list(read(str(path)))
    except DataError as e:
        assert str(e).startswith(f"{path}:"), str(e)
        line = int(str(e)[len(str(path)) + 1:].split(":")[0])
        assert 1 <= line <= data.count(b"\n") + 1
        return None


@PROPS
@given(data=line_files(2))
def test_property_rawdata_read_queries(tmp_path, data):
    got = _read_or_refuse(tmp_path, data, rawdata.read_queries)
    if got is not None:
        assert all(isinstance(q, int) and isinstance(t, str) and "\r" not in t for q, t in got)
        assert len(got) == len(data.splitlines())


@PROPS
@given(data=line_files(4))
def test_property_rawdata_read_collection_doc(tmp_path, data):
    got = _read_or_refuse(tmp_path, data, lambda path: rawdata.read_collection(path, "doc"))
    assert got in (None, [])  # no generated id carries the D prefix: any line is an error


@PROPS
@given(data=line_files(4), doc=st.booleans())
def test_property_metrics_read_qrels(tmp_path, data, doc):
    path = tmp_path / "qrels"
    path.write_bytes(data)
    try:
        got = metrics.read_qrels(str(path), doc=doc)
    except DataError as e:
        assert str(e).startswith(f"{path}"), str(e)
        return
    assert not doc and got and all(isinstance(j, dict) for j in got.values())
    assert all(isinstance(g, int) for j in got.values() for g in j.values())


@PROPS
@given(data=line_files(3))
def test_property_metrics_read_run(tmp_path, data):
    path = tmp_path / "run"
    path.write_bytes(data)
    try:
        got = metrics.read_run(str(path))
    except DataError as e:
        assert str(e).startswith(f"{path}"), str(e)
        return
    for by_rank in got.values():
        assert list(by_rank) == sorted(by_rank) and len(set(by_rank.values())) == len(by_rank)


hard_values = st.one_of(st.lists(st.integers(-2, 12), max_size=3), st.integers(), st.text(max_size=2),
                        st.lists(st.booleans(), max_size=2), st.none())
hard_keys = st.one_of(st.integers(-1, 8).map(str), st.sampled_from(["x", "", "01", " 1", "1.0", "\u0663"]))


@PROPS
@given(obj=st.dictionaries(hard_keys, hard_values, max_size=4), mangle=st.sampled_from(
    [None, "bom", "badbyte", "truncate", "dupkey"]))
def test_property_load_hardneg(tmp_path, obj, mangle):
    path = tmp_path / "hard.json"
    data = json.dumps(obj).encode()
    if mangle == "bom":
        data = b"\xef\xbb\xbf" + data
    elif mangle == "badbyte":
        data = data[:1] + b"\n\xff" + data[1:]
    elif mangle == "truncate":
        data = data[:-1]
    elif mangle == "dupkey" and obj:
        k = json.dumps(next(iter(obj)))
        data = data[:-1] + (b", " if len(obj) else b"") + k.encode() + b": []}"
    path.write_bytes(data)
    try:
        got = load_hardneg(str(path), n_passages=10, n_queries=6)
    except DataError as e:
        assert str(e).startswith(f"{path}"), str(e)
        return
    assert mangle is None or (mangle == "dupkey" and not obj)
    assert got == {int(k): v for k, v in obj.items()}
    assert all(k.isascii() and k.isdigit() and int(k) < 6 for k in obj)
    assert all(isinstance(v, list) and all(type(p) is int and 0 <= p < 10 for p in v) for v in obj.values())
