"""cvt_back.py: offsets -> official ids, end to end through the CLI."""
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


def test_refuses_to_overwrite(setup, tmp_path):
    pre, inp, _ = setup
    out = tmp_path / "official"
    out.mkdir()
    (out / "dev.rank.tsv").write_text("keep me\n")
    res = cvt(*args(pre, inp, out))
    assert res.returncode == 1
    assert "already exists" in res.stderr and "dev.rank.tsv" in res.stderr
    assert (out / "dev.rank.tsv").read_text() == "keep me\n"


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


def test_wrong_mode_map_is_reported(setup, tmp_path):
    pre, inp, _ = setup
    save_offset_map(str(pre / "test-qid2offset.pickle"), {19335: 0})
    (inp / "test.rank.tsv").write_text("0\t1\t1\n1\t1\t1\n")
    res = cvt(*args(pre, inp, tmp_path / "o", mode="test"))
    assert res.returncode == 1 and "test.rank.tsv:2: query offset 1" in res.stderr
