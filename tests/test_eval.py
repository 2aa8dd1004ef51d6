"""msmarco_eval.py and drhard.metrics: official MRR semantics and output, trec_eval measures."""
import math
import random
import subprocess
import sys

import pytest

from conftest import REPO, shared_path
from drhard import metrics
from drhard.io import DataError

SCRIPT = str(REPO / "msmarco_eval.py")


def run_eval(*args, cwd=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def small(tmp_path):
    """Four judged queries; the run ranks three of them plus an unjudged one."""
    qrels = write(tmp_path / "qrels.tsv", [
        "101\t0\t7\t1",
        "202\t0\t3\t1",
        "202\t0\t9\t1",
        "303\t0\t5\t1",
        "404\t0\t1\t1",
    ])
    run_lines = ["202\t8\t1", "202\t9\t2", "202\t3\t3"]           # first relevant at rank 2
    run_lines += [f"101\t{p}\t{p}" for p in range(1, 8)]         # pid 7 at rank 7
    run_lines += [f"303\t{100 + r}\t{r}" for r in range(1, 11)]  # pid 5 at rank 11
    run_lines += ["303\t5\t11", "999\t5\t1"]
    run = write(tmp_path / "run.tsv", run_lines)
    return qrels, run


def test_mrr_hand_computed(small):
    qrels, run = small
    q, r = metrics.read_qrels(str(qrels)), metrics.read_run(str(run))
    # run order 202, 101, 303; divided by the 4 qrels queries (404 is missed, 999 unjudged)
    assert metrics.mrr_at_k(q, r, 10) == (1 / 2 + 1 / 7) / 4
    assert metrics.mrr_at_k(q, r, 5) == (1 / 2) / 4
    assert metrics.mrr_at_k(q, r, 100) == (1 / 2 + 1 / 7 + 1 / 11) / 4
    assert metrics.mrr_at_k(q, r, 1) == 0


def test_cli_prints_official_lines(small):
    qrels, run = small
    res = run_eval(qrels, run)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("Eval Started\n"
                          "#####################\n"
                          f"MRR @10: {(1 / 2 + 1 / 7) / 4}\n"
                          "QueriesRanked: 4\n"
                          "#####################\n")
    res = run_eval(qrels, run, 100)
    assert res.stdout.splitlines()[2] == f"MRR @100: {(1 / 2 + 1 / 7 + 1 / 11) / 4}"


def test_cli_extra_measures_are_opt_in_and_sorted(small):
    qrels, run = small
    res = run_eval(qrels, run, "--recall", "100", "--ndcg")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    names = [line.split(":")[0] for line in lines[2:-1]]
    assert names == ["MRR @10", "NDCG @10", "QueriesRanked", "Recall @100"]
    # recall@100: 101 1/1, 202 2/2, 303 1/1, 404 0/1 (missing from the run counts as 0)
    assert lines[5] == f"Recall @100: {3 / 4}"


def test_doc_mode_needs_d_prefixes(tmp_path):
    qrels = write(tmp_path / "msmarco-docdev-qrels.tsv", ["11 0 D70 1", "12 0 D80 1"])
    run = write(tmp_path / "dev.rank.tsv", [f"11\tD{p}\t{p}" for p in range(1, 71)]
                + ["12\tD80\t101"])
    res = run_eval(qrels, run, "doc")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2] == f"MRR @100: {(1 / 70) / 2}"  # K=100: rank 101 is out
    bare = write(tmp_path / "bare.tsv", ["11\tD70\t1", "12\t80\t1"])
    res = run_eval(qrels, bare, "doc")
    assert res.returncode == 1
    assert f"{bare}:2" in res.stderr and "'D' prefix" in res.stderr


def test_numeric_k_with_offset_files(tmp_path):
    """The README's doc evaluation on preprocess offsets: ``... dev-qrel.tsv dev.rank.tsv 100``."""
    qrels = write(tmp_path / "dev-qrel.tsv", ["0\t0\t40\t1", "1\t0\t3\t1"])
    run = write(tmp_path / "dev.rank.tsv", [f"0\t{p}\t{p + 1}" for p in range(60)] + ["1\t3\t1"])
    res = run_eval(qrels, run, 100)
    assert res.stdout.splitlines()[2] == f"MRR @100: {(1 / 41 + 1) / 2}"


def test_graded_qrels_threshold(tmp_path):
    qrels = write(tmp_path / "2019qrels-pass.txt", ["5 Q0 10 0", "5 Q0 11 1", "5 Q0 12 2", "6 Q0 20 0"])
    run = write(tmp_path / "run.tsv", ["5\t10\t1", "5\t11\t2", "5\t12\t3", "6\t20\t1"])
    q, r = metrics.read_qrels(str(qrels)), metrics.read_run(str(run))
    # grade 0 is judged non-relevant; query 6 has no relevant passage but stays in the denominator
    assert metrics.mrr_at_k(q, r, 10) == (1 / 2) / 2
    assert metrics.mrr_at_k(q, r, 10, min_rel=2) == (1 / 3) / 2
    res = run_eval(qrels, run, "--min_rel", "2")
    assert res.stdout.splitlines()[2] == f"MRR @10: {(1 / 3) / 2}"


def test_rank_value_not_position_and_big_ranks(tmp_path):
    qrels = write(tmp_path / "q.tsv", ["1\t0\t9\t1", "2\t0\t4\t1"])
    run = write(tmp_path / "r.tsv", ["1\t8\t1", "1\t9\t3", "2\t4\t1500", "2\t5\t1"])
    r = metrics.read_run(str(run))
    q = metrics.read_qrels(str(qrels))
    assert metrics.mrr_at_k(q, r, 10) == (1 / 3) / 2        # the gap at rank 2 is kept
    assert metrics.mrr_at_k(q, r, 2000) == (1 / 3 + 1 / 1500) / 2
    res = run_eval(qrels, run)                                # ranks > 1000 do not crash
    assert res.returncode == 0 and "QueriesRanked: 2" in res.stdout


def test_trec_run_format_gives_same_numbers(small, tmp_path):
    qrels, run = small
    trec = tmp_path / "run.trec"
    write(trec, [f"{q} Q0 {p} {r} {-int(r)} tag" for q, p, r in
                 (line.split("\t") for line in run.read_text().splitlines())])
    a = metrics.evaluate_run(str(qrels), str(run))
    b = metrics.evaluate_run(str(qrels), str(trec))
    assert a == b and a["MRR @10"] == (1 / 2 + 1 / 7) / 4


@pytest.mark.parametrize("lines,lineno,words", [
    (["1\t2\t1", "1\tx\t2"], 2, "not an integer"),
    (["1\t2\t1", "1\t2"], 2, "columns"),
    (["1\t2\t1", "1\t3\t0"], 2, "1-based"),
    (["1\t2\t1", "1\t3\t2", "1\t2\t3"], 3, "twice (also on line 1)"),
    (["1\t2\t1", "1\t3\t1"], 2, "two passages at rank 1 (also on line 1)"),
    (["1 Q0 2 1 notanumber tag"], 1, "score"),
])
def test_malformed_run_names_file_and_line(tmp_path, lines, lineno, words):
    run = write(tmp_path / "run.tsv", lines)
    with pytest.raises(DataError) as e:
        metrics.read_run(str(run))
    assert f"{run}:{lineno}:" in str(e.value) and words in str(e.value)
    qrels = write(tmp_path / "q.tsv", ["1\t0\t2\t1"])
    res = run_eval(qrels, run)
    assert res.returncode == 1 and f"{run}:{lineno}:" in res.stderr


@pytest.mark.parametrize("lines,lineno,words", [
    (["1\t0\t2\t1", "1\t0\t3"], 2, "4 columns"),
    (["1\t0\t2\t1", "q\t0\t3\t1"], 2, "query id"),
    (["1\t0\t2\t1", "1\t0\t2\t2"], 2, "judged again"),
])
def test_malformed_qrels_names_file_and_line(tmp_path, lines, lineno, words):
    qrels = write(tmp_path / "q.tsv", lines)
    with pytest.raises(DataError) as e:
        metrics.read_qrels(str(qrels))
    assert f"{qrels}:{lineno}:" in str(e.value) and words in str(e.value)


def test_crlf_is_tolerated_bom_is_not(tmp_path):
    qrels = tmp_path / "q.tsv"
    qrels.write_bytes(b"1\t0\t2\t1\r\n3\t0\t4\t1\r\n")
    assert metrics.read_qrels(str(qrels)) == {"1": {"2": 1}, "3": {"4": 1}}
    qrels.write_bytes("\ufeff1\t0\t2\t1\n".encode())
    with pytest.raises(DataError, match=":1: starts with a UTF-8 byte-order mark"):
        metrics.read_qrels(str(qrels))


def test_offset_run_against_official_qrels_warns(tmp_path):
    """The mix-up that gives MRR ~0.01: a run of query offsets scored against official qrels."""
    rng = random.Random(0)
    qids = [2, 7] + rng.sample(range(10_000, 1_100_000), 38)
    pairs = [(q, rng.randrange(8_000_000)) for q in qids]
    qrels = write(tmp_path / "qrels.dev.small.tsv", [f"{q}\t0\t{p}\t1" for q, p in pairs])
    run = write(tmp_path / "dev.rank.tsv", [f"{qoff}\t{rng.randrange(8_000_000)}\t1" for qoff in range(40)])
    res = run_eval(qrels, run)
    assert res.returncode == 0
    assert "WARNING" in res.stderr and "preprocess offsets" in res.stderr and "cvt_back.py" in res.stderr
    assert res.stdout.startswith("Eval Started\n#####################\nMRR @10: ")  # stdout stays official

    good = write(tmp_path / "good.tsv", [f"{q}\t{p}\t1" for q, p in pairs])
    res = run_eval(qrels, good)
    assert res.returncode == 0 and res.stderr == ""


def test_right_queries_wrong_passage_ids_warns(tmp_path):
    qrels = write(tmp_path / "q.tsv", [f"{q}\t0\t{5_000_000 + q}\t1" for q in range(100, 120)])
    run = write(tmp_path / "r.tsv", [f"{q}\t{q - 100}\t1" for q in range(100, 120)])
    msgs = metrics.id_scheme_warnings(metrics.read_qrels(str(qrels)), metrics.read_run(str(run)))
    assert len(msgs) == 1 and "same passage ids" in msgs[0]


def test_no_shared_query_is_an_error(tmp_path):
    qrels = write(tmp_path / "q.tsv", ["1\t0\t2\t1"])
    run = write(tmp_path / "r.tsv", ["5\t2\t1"])
    res = run_eval(qrels, run)
    assert res.returncode == 1 and "no query of the run is in the qrels" in res.stderr


# --------------------------------------------------------------------------- trec_eval measures
def reference_ndcg_at_10(judged, ranking):
    """Obvious NDCG@10: gain = grade, discount log2(position + 1), ideal from all judgments."""
    dcg = sum(max(judged.get(p, 0), 0) / math.log2(i + 2) for i, p in enumerate(ranking[:10]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def test_ndcg_tiny_by_hand():
    qrels = {"1": {"a": 3, "b": 1, "c": 0}, "2": {"x": 2}}
    run = {"1": ["c", "b", "a", "z"]}
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    # query 2 is not in the run: trec_eval -c counts it as 0
    assert metrics.ndcg_cut_10(qrels, run) == pytest.approx((dcg / idcg + 0) / 2, abs=1e-12)


def test_recall_tiny_by_hand():
    qrels = {"1": {"a": 1, "b": 1, "n": 0}, "2": {"x": 1}}
    run = {"1": ["a", "n"] + [f"z{i}" for i in range(98)] + ["b"]}
    assert metrics.recall_at_k(qrels, run, 100) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.recall_at_k(qrels, run, 1000) == pytest.approx((2 / 2 + 0) / 2)
    # trec_eval sees the order only: a gap in the rank values does not push b out of the top 2
    assert metrics.recall_at_k(qrels, {"1": {1: "a", 150: "b", 2: "n"}}, 2) == pytest.approx(1 / 4)


def perturbed_run(qrels, seed):
    """A plausible run over real qrels: judged pids shuffled among unjudged ones, a few queries dropped."""
    rng = random.Random(seed)
    qids = sorted(qrels)
    dropped = set(rng.sample(qids, 3))
    run = {}
    for q in qids:
        if q in dropped:
            continue
        pids = list(qrels[q]) + [f"{9_000_000 + i}" for i in range(30)]
        rng.shuffle(pids)
        pids.sort(key=lambda p: -qrels[q].get(p, 0) * rng.random())  # better grades drift up
        run[q] = pids[:rng.choice([5, 50, 120])]
    return run, dropped


def test_ndcg_and_recall_on_real_dl19_qrels():
    import pytrec_eval

    path = shared_path("data", "msmarco-eval", "2019qrels-pass.txt")
    qrels = metrics.read_qrels(str(path))
    assert len(qrels) == 43
    run, dropped = perturbed_run(qrels, seed=1)

    ours = metrics.ndcg_cut_10(qrels, run)
    slow = sum(reference_ndcg_at_10(qrels[q], run[q]) if q in run else 0.0 for q in qrels) / len(qrels)
    assert ours == pytest.approx(slow, abs=1e-9)

    # pytrec_eval used directly (its own averaging is over the run's queries only)
    scored = {q: {p: float(len(ps) - i) for i, p in enumerate(ps)} for q, ps in run.items()}
    direct = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}, relevance_level=2).evaluate(scored)
    assert set(direct) == set(qrels) - dropped
    assert ours == pytest.approx(sum(v["ndcg_cut_10"] for v in direct.values()) / 43, abs=1e-12)
    recall = metrics.recall_at_k(qrels, run, 100, min_rel=2)
    assert recall == pytest.approx(sum(v["recall_100"] for v in direct.values()) / 43, abs=1e-12)
    assert 0 < recall < 1 and 0 < ours < 1


def test_evaluate_run_gives_every_number(tmp_path):
    path = shared_path("data", "msmarco-eval", "2019qrels-pass.txt")
    qrels = metrics.read_qrels(str(path))
    run, _ = perturbed_run(qrels, seed=2)
    run_path = write(tmp_path / "run.tsv", [f"{q}\t{p}\t{i}" for q, ps in run.items()
                                             for i, p in enumerate(ps, 1)])
    got = metrics.evaluate_run(str(path), str(run_path))
    assert set(got) == {"MRR @10", "QueriesRanked", "Recall @100", "NDCG @10"}
    assert got["QueriesRanked"] == 40
    assert got["NDCG @10"] == pytest.approx(metrics.ndcg_cut_10(qrels, run), abs=1e-12)
    assert got["MRR @10"] == metrics.mrr_at_k(qrels, run, 10)


def test_ids_are_canonical_and_d_ids_stay_apart(tmp_path):
    qrels = write(tmp_path / "q.tsv", ["1 0 7 1", "2 0 D8 1", "3 0 9 1"])
    run = write(tmp_path / "r.tsv", ["01\t007\t1", "2\t8\t1", "3\tD9\t1"])
    q, r = metrics.read_qrels(str(qrels)), metrics.read_run(str(run))
    assert list(r) == ["1", "2", "3"] and r["1"] == {1: "7"}
    assert metrics.mrr_at_k(q, r, 10) == 1 / 3          # only query 1 matches: D8 != 8, 9 != D9
