"""preprocess outputs form one set: the manifest records every file, readers compare against it,
and reuse of the passages is keyed on the collection's content (not its size).

(A commit killed between two renames is tested in test_kill.py.)
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import drhard.io as dio
import drhard.preprocess as pp
from drhard.io import DataError, TokenCache, check_token_cache, read_meta
from drhard.preprocess import PreprocessArgs, preprocess
from toy_data import make_tiny_tokenizer, make_toy_msmarco


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _run(data, out, tok, **kw):
    return preprocess(PreprocessArgs(data_dir=str(data), out_data_dir=str(out), data_type="passage",
                                     model_name_or_path=str(tok), threads=1, max_seq_length=32,
                                     max_query_length=12, **kw))


def _bytes(folder):
    return {n: (Path(folder) / n).read_bytes() for n in sorted(os.listdir(folder)) if n != pp.MANIFEST}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tok_dir):
    """Two complete folders of two different datasets (same flags)."""
    root = tmp_path_factory.mktemp("sets")
    a = make_toy_msmarco(root / "a", "passage", n_passages=80, seed=1)
    b = make_toy_msmarco(root / "b", "passage", n_passages=80, seed=2)
    _run(a, root / "out_a", tok_dir)
    _run(b, root / "out_b", tok_dir)
    return root, a, b


def _copy_a(two_runs, tmp_path):
    root = two_runs[0]
    shutil.copytree(root / "out_a", tmp_path / "a")
    return tmp_path / "a", root / "out_b"


def test_manifest_records_every_output_and_the_inputs_content(two_runs):
    root, a, _ = two_runs
    man = json.loads((root / "out_a" / pp.MANIFEST).read_text())
    outputs = sorted(n for n in os.listdir(root / "out_a") if n != pp.MANIFEST)
    assert sorted(man["files"]) == outputs == sorted(set(pp.output_names()) - {pp.MANIFEST, "lead-qrel.tsv"})
    for name in outputs:
        data = (root / "out_a" / name).read_bytes()
        assert man["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for name, digest in man["input_sha256"].items():
        assert digest == hashlib.sha256((a / name).read_bytes()).hexdigest()
    assert len(man["input_sha256"]) == 8


def test_large_files_are_recorded_by_size_and_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(dio, "SET_FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(dio, "SET_EDGE_BYTES", 100)
    raw = bytes(range(256)) * 20
    (tmp_path / "f").write_bytes(raw)
    rec = dio.set_file_record(str(tmp_path / "f"))
    assert rec == {"size": len(raw), "sha256_edges": hashlib.sha256(raw[:100] + raw[-100:]).hexdigest()}
    (tmp_path / "f").write_bytes(raw[:2000] + b"\0" + raw[2001:])  # the middle of a large file: not read
    assert dio.record_matches(str(tmp_path / "f"), rec)
    (tmp_path / "f").write_bytes(raw[:-1] + b"\0")
    assert not dio.record_matches(str(tmp_path / "f"), rec)


@pytest.mark.parametrize("mix", ["qrels", "id map", "query cache", "qrels same size", "passages byte"])
def test_readers_refuse_files_of_another_run(two_runs, tmp_path, mix):
    a, b = _copy_a(two_runs, tmp_path)
    TokenCache(str(a / "train-query"))  # complete and consistent: readable
    TokenCache(str(a / "passages"))
    reader, bad = "train-query", None
    if mix == "qrels":
        bad = "train-qrel.tsv"
        shutil.copy(b / bad, a / bad)
    elif mix == "id map":
        bad = "train-qid2offset.pickle"
        shutil.copy(b / bad, a / bad)
    elif mix == "query cache":  # a whole cache of the other run: consistent in itself
        for n in ("train-query.memmap", "train-query_length.npy", "train-query_meta"):
            shutil.copy(b / n, a / n)
        bad = "train-query.memmap"  # (the metas agree: same row count and width)
    elif mix == "qrels same size":
        bad = "train-qrel.tsv"
        lines = (a / bad).read_text().splitlines(keepends=True)
        k = next(i for i in range(1, len(lines)) if lines[i] != lines[0] and len(lines[i]) == len(lines[0]))
        lines[0], lines[k] = lines[k], lines[0]
        (a / bad).write_text("".join(lines))
    else:
        reader, bad = "passages", "passages.memmap"
        raw = bytearray((a / bad).read_bytes())
        raw[5] ^= 1
        (a / bad).write_bytes(bytes(raw))
    with pytest.raises(DataError, match="preprocess.py runs are mixed") as e:
        TokenCache(str(a / reader))
    assert str(e.value).startswith(f"{a / bad}:")
    with pytest.raises(DataError, match="mixed"):
        check_token_cache(str(a / reader))


def test_folder_without_manifest_stays_readable(two_runs, tmp_path):
    a, b = _copy_a(two_runs, tmp_path)
    shutil.copy(b / "train-qrel.tsv", a / "train-qrel.tsv")
    os.remove(a / pp.MANIFEST)  # a folder written by the original code: nothing to compare with
    assert len(TokenCache(str(a / "train-query"))) == json.loads((a / "train-query_meta").read_text())["total_number"]
    assert read_meta(str(a / "passages"))["total_number"] == 80


def test_commit_marker_makes_every_reader_refuse(two_runs, tmp_path):
    a, _ = _copy_a(two_runs, tmp_path)
    (a / dio.COMMIT_MARKER).write_text("{}")
    for call in (lambda: TokenCache(str(a / "train-query")), lambda: check_token_cache(str(a / "passages")),
                 lambda: read_meta(str(a / "passages"))):
        with pytest.raises(DataError, match="interrupted preprocess.py commit left a mixed set.*rerun preprocess.py"):
            call()


def test_same_size_edit_of_the_collection_rebuilds_the_passages(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=60, seed=3)
    out = tmp_path / "out"
    assert _run(data, out, tok_dir)["passages_reused"] is False
    assert _run(data, out, tok_dir)["passages_reused"] is True  # same content: reused
    coll = data / "collection.tsv"
    size = coll.stat().st_size
    lines = coll.read_text(encoding="utf-8").splitlines(keepends=True)
    # swap the ids of two passages whose ids have the same number of digits: same size, other content
    p1, t1 = lines[1].split("\t", 1)
    p2, t2 = lines[7].split("\t", 1)
    lines[1], lines[7] = f"{p2}\t{t1}", f"{p1}\t{t2}"
    coll.write_text("".join(lines), encoding="utf-8")
    assert coll.stat().st_size == size
    man = _run(data, out, tok_dir)
    assert man["passages_reused"] is False
    fresh = tmp_path / "fresh"
    _run(data, fresh, tok_dir)
    assert _bytes(out) == _bytes(fresh)


def test_passages_edited_in_place_are_not_reused(tmp_path, tok_dir):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=60, seed=3)
    out = tmp_path / "out"
    _run(data, out, tok_dir)
    before = _bytes(out)
    raw = bytearray((out / "passages.memmap").read_bytes())
    raw[40] ^= 1
    (out / "passages.memmap").write_bytes(bytes(raw))
    assert _run(data, out, tok_dir)["passages_reused"] is False
    assert _bytes(out) == before


def test_scan_file_counts_lines_and_hashes_the_content(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "SCAN_BLOCK", 3)
    for text in [b"", b"a\n", b"a\nb", b"a\nbcdefgh\n", b"\n\n", b"x" * 10]:
        (tmp_path / "f").write_bytes(text)
        n = text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)
        assert pp.scan_file(str(tmp_path / "f")) == (n, hashlib.sha256(text).hexdigest())


def test_collection_changed_during_the_run_is_an_error(tmp_path, tok_dir, monkeypatch):
    data = make_toy_msmarco(tmp_path / "data", "passage", n_passages=40)
    real = pp.scan_file

    def scan_then_edit(path):  # the file changes (same line count) after it was counted and hashed
        got = real(path)
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
        lines[3] = "3\tanother text\n"
        Path(path).write_text("".join(lines), encoding="utf-8")
        return got

    monkeypatch.setattr(pp, "scan_file", scan_then_edit)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="changed while preprocess.py read it"):
        _run(data, out, tok_dir)
    assert os.listdir(out) == []


def test_id_map_and_qrels_readers_refuse_a_half_committed_or_mixed_folder(two_runs, tmp_path, capsys):
    """cvt_back.py and BM25 read only id maps and qrels: they go through the same set check as the token
    caches, so a folder TokenCache refuses is refused by them too."""
    from drhard.bm25 import mine_bm25_negatives
    from drhard.cli import run
    from drhard.commands import cvt_back
    root, data_a, _ = two_runs
    a, b = _copy_a(two_runs, tmp_path)
    inp = tmp_path / "run"
    dio.write_rank(dio.rank_path(str(inp), "train"), [0, 1], [[0, 1], [2, 3]])
    argv = ["--input_dir", str(inp), "--preprocess_dir", str(a), "--mode", "train", "--dataset", "passage"]
    assert run(cvt_back.main, argv + ["--output_dir", str(tmp_path / "ok")]) == 0  # the consistent folder
    shutil.copy(b / "train-qid2offset.pickle", a / "train-qid2offset.pickle")  # a map of another run
    with pytest.raises(DataError, match="preprocess.py runs are mixed"):
        dio.load_offset_map(dio.qid2offset_path(str(a), "train"))
    capsys.readouterr()
    assert run(cvt_back.main, argv + ["--output_dir", str(tmp_path / "mixed")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {a / 'train-qid2offset.pickle'}: " + err[0].split(": ", 2)[2]] and "mixed" in err[0]
    assert not (tmp_path / "mixed").exists()

    shutil.copy(root / "out_a" / "train-qid2offset.pickle", a / "train-qid2offset.pickle")
    (a / dio.COMMIT_MARKER).write_text("{}")  # a commit killed between two renames
    interrupted = "interrupted preprocess.py commit left a mixed set"
    for read in (lambda: dio.load_offset_map(dio.pid2offset_path(str(a))),
                 lambda: dio.read_offset_qrels(dio.qrel_path(str(a), "train")),
                 lambda: mine_bm25_negatives(str(data_a), "passage", str(a), str(tmp_path / "bm25"), topk=5)):
        with pytest.raises(DataError, match=interrupted):
            read()
    assert run(cvt_back.main, argv + ["--output_dir", str(tmp_path / "half")]) == 1
    assert interrupted in capsys.readouterr().err and not (tmp_path / "half").exists()
    assert not (tmp_path / "bm25").exists()


def test_passage_count_is_none_only_when_there_is_no_passages_meta(two_runs, tmp_path):
    from drhard.retrieval import passage_count
    a, _ = _copy_a(two_runs, tmp_path)
    assert passage_count(str(a)) == 80
    (a / dio.COMMIT_MARKER).write_text("{}")
    with pytest.raises(DataError, match="interrupted preprocess.py commit"):
        passage_count(str(a))  # not "no meta": a half-committed folder
    os.remove(a / dio.COMMIT_MARKER)
    (a / "passages_meta").write_text("not json")
    with pytest.raises(DataError, match="passages_meta"):
        passage_count(str(a))
    os.remove(a / "passages_meta")
    assert passage_count(str(a)) is None
