"""cvt_back.py: offsets -> official ids, end to end through the CLI."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from drhard import metrics
from drhard.io import save_offset_map, write_rank

SCRIPT = str(REPO / "cvt_back.py")

QIDS = [1048585, 2, 524332]                      # dev qids in query-file order -> offsets 0, 1, 2
PIDS = [7067032, 7067056, 0, 3, 8841822]         # collection pids -> offsets 0..4


def cvt(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def setup(tmp_path):
    pre = tmp_path / "preprocess"
    pre.mkdir()
    save_offset_map(str(pre / "pid2offset.pickle"), {p: i for i, p in enumerate(PIDS)})
    save_offset_map(str(pre / "dev-qid2offset.pickle"), {q: i for i, q in enumerate(QIDS)})
    inp = tmp_path / "evaluate"
    inp.mkdir()
    ranking = [[4, 0, 2], [1, 3], [2, 4, 0]]      # poffsets per qoffset
    write_rank(str(inp / "dev.rank.tsv"), range(3), ranking)
    return pre, inp, ranking


def args(pre, inp, out, dataset="passage", mode="dev"):
    return ["--input_dir", inp, "--preprocess_dir", pre, "--output_dir", out, "--mode", mode, "--dataset", dataset]


@pytest.mark.slow
def test_passage_round_trip(setup, tmp_path):
    pre, inp, ranking = setup
    out = tmp_path / "official"
    res = cvt(*args(pre, inp, out))
    assert res.returncode == 0, res.stderr
    lines = (out / "dev.rank.tsv").read_text().splitlines()
    expected = [f"{QIDS[qo]}\t{PIDS[po]}\t{r}" for qo, pos in enumerate(ranking) for r, po in enumerate(pos, 1)]
    assert lines == expected
    assert not (out / "dev.rank.trec").exists()

    # converted back, it scores against official qrels as the offset run scores against offset qrels
    (tmp_path / "off-qrel.tsv").write_text("0\t0\t2\t1\n1\t0\t3\t1\n2\t0\t1\t1\n")
    (tmp_path / "qrels.tsv").write_text(f"{QIDS[0]}\t0\t{PIDS[2]}\t1\n{QIDS[1]}\t0\t{PIDS[3]}\t1\n"
                                        f"{QIDS[2]}\t0\t{PIDS[1]}\t1\n")
    a = metrics.evaluate_run(str(tmp_path / "off-qrel.tsv"), str(inp / "dev.rank.tsv"))
    b = metrics.evaluate_run(str(tmp_path / "qrels.tsv"), str(out / "dev.rank.tsv"))
    assert a == b and a["MRR @10"] == (1 / 3 + 1 / 2) / 3


@pytest.mark.slow
def test_doc_prefix_and_trec_output(setup, tmp_path):
    pre, inp, ranking = setup
    out = tmp_path / "official"
    res = cvt(*args(pre, inp, out, dataset="doc"), "--output_format", "both", "--run_tag", "star")
    assert res.returncode == 0, res.stderr
    tsv = (out / "dev.rank.tsv").read_text().splitlines()
    trec = (out / "dev.rank.trec").read_text().splitlines()
    assert tsv[0] == f"{QIDS[0]}\tD{PIDS[4]}\t1"
    assert all(line.split("\t")[1].startswith("D") for line in tsv)
    assert trec[:2] == [f"{QIDS[0]} Q0 D{PIDS[4]} 1 -1 star", f"{QIDS[0]} Q0 D{PIDS[0]} 2 -2 star"]
    # the pseudo-score orders exactly as the ranks do
    assert metrics.read_run(str(out / "dev.rank.trec"), doc=True) == metrics.read_run(str(out / "dev.rank.tsv"),
                                                                                      doc=True)


@pytest.mark.slow
def test_refuses_to_overwrite(setup, tmp_path):
    pre, inp, _ = setup
    out = tmp_path / "official"
    out.mkdir()
    (out / "dev.rank.tsv").write_text("keep me\n")
    res = cvt(*args(pre, inp, out))
    assert res.returncode == 1
    assert "already exists" in res.stderr and "dev.rank.tsv" in res.stderr
    assert (out / "dev.rank.tsv").read_text() == "keep me\n"


@pytest.mark.slow
def test_unknown_offset_names_file_and_line(setup, tmp_path):
    pre, inp, _ = setup
    with open(inp / "dev.rank.tsv", "a") as f:
        f.write("2\t99\t4\n")
    n_lines = len((inp / "dev.rank.tsv").read_text().splitlines())
    out = tmp_path / "official"
    res = cvt(*args(pre, inp, out))
    assert res.returncode == 1
    assert f"dev.rank.tsv:{n_lines}: passage offset 99" in res.stderr
    assert not (out / "dev.rank.tsv").exists()            # nothing half-written is left behind


@pytest.mark.slow
def test_wrong_mode_map_is_reported(setup, tmp_path):
    pre, inp, _ = setup
    save_offset_map(str(pre / "test-qid2offset.pickle"), {19335: 0})
    (inp / "test.rank.tsv").write_text("0\t1\t1\n1\t1\t1\n")
    res = cvt(*args(pre, inp, tmp_path / "o", mode="test"))
    assert res.returncode == 1 and "test.rank.tsv:2: query offset 1" in res.stderr


def _errors(res):
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr, res.stderr
    return [ln for ln in lines if "error:" in ln]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["rank file", "query map", "passage map"])
def test_a_directory_where_a_file_is_expected_exits_2(setup, tmp_path, where):
    pre, inp, _ = setup
    target = {"rank file": inp / "dev.rank.tsv", "query map": pre / "dev-qid2offset.pickle",
              "passage map": pre / "pid2offset.pickle"}[where]
    target.unlink()
    target.mkdir()
    res = cvt(*args(pre, inp, tmp_path / "official"))
    errors = _errors(res)
    assert res.returncode == 2 and len(errors) == 1 and f"{target} is a directory" in errors[0]
    assert not (tmp_path / "official").exists()


@pytest.mark.slow
def test_a_file_where_a_folder_is_expected_exits_2(setup, tmp_path):
    pre, inp, _ = setup
    out = tmp_path / "official"
    out.write_text("")
    res = cvt(*args(pre, inp, out))
    errors = _errors(res)
    assert res.returncode == 2 and len(errors) == 1 and "--output_dir" in errors[0] and "not a directory" in errors[0]


@pytest.mark.slow
def test_an_output_folder_that_takes_no_files_is_one_error_line(setup, tmp_path):
    """Read-only folder: as root chmod does not stop writes, so a folder under a regular file stands in
    for it (NotADirectoryError, an OSError, as PermissionError is); it was a traceback."""
    pre, inp, _ = setup
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "official"
    res = cvt(*args(pre, inp, out))
    errors = _errors(res)
    assert res.returncode == 1 and errors == [f"error: {out}: Not a directory"]


@pytest.mark.slow
def test_a_read_only_output_folder_is_one_error_line(setup, tmp_path):
    pre, inp, _ = setup
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        res = cvt(*args(pre, inp, out))
        errors = _errors(res)
        assert res.returncode == 1 and len(errors) == 1 and "Permission denied" in errors[0]
        assert os.listdir(out) == []
    finally:
        out.chmod(0o755)


def test_a_full_disk_is_one_error_line_and_leaves_no_file(setup, tmp_path, monkeypatch, capsys):
    import errno

    from drhard.cli import run
    from drhard.commands import cvt_back as mod
    pre, inp, _ = setup

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the data reaches the disk at fsync, before the rename
    out = tmp_path / "official"
    rc = run(mod.main, [str(a) for a in args(pre, inp, out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1] == f"error: {out / 'dev.rank.tsv'}: No space left on device"
    assert os.listdir(out) == []  # the temp file is removed
