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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_extra_measures_are_opt_in_and_sorted(small):
    qrels, run = small
    res = run_eval(qrels, run, "--recall", "100", "--ndcg")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    names = [line.split(":")[0] for line in lines[2:-1]]
    assert names == ["MRR @10", "NDCG @10", "QueriesRanked", "Recall @100"]
    # recall@100: 101 1/1, 202 2/2, 303 1/1, 404 0/1 (missing from the run counts as 0)
    assert lines[5] == f"Recall @100: {3 / 4}"


@pytest.mark.slow
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


@pytest.mark.slow
def test_numeric_k_with_offset_files(tmp_path):
    """The README's doc evaluation on preprocess offsets: ``... dev-qrel.tsv dev.rank.tsv 100``."""
    qrels = write(tmp_path / "dev-qrel.tsv", ["0\t0\t40\t1", "1\t0\t3\t1"])
    run = write(tmp_path / "dev.rank.tsv", [f"0\t{p}\t{p + 1}" for p in range(60)] + ["1\t3\t1"])
    res = run_eval(qrels, run, 100)
    assert res.stdout.splitlines()[2] == f"MRR @100: {(1 / 41 + 1) / 2}"


@pytest.mark.slow
def test_graded_qrels_threshold(tmp_path):
    qrels = write(tmp_path / "2019qrels-pass.txt", ["5 Q0 10 0", "5 Q0 11 1", "5 Q0 12 2", "6 Q0 20 0"])
    run = write(tmp_path / "run.tsv", ["5\t10\t1", "5\t11\t2", "5\t12\t3", "6\t20\t1"])
    q, r = metrics.read_qrels(str(qrels)), metrics.read_run(str(run))
    # default: the official rule, every qrels line is relevant (grade 0 too)
    assert metrics.mrr_at_k(q, r, 10) == (1 + 1) / 2
    # opt-in threshold: grade 0 is judged non-relevant; query 6 has no relevant passage but stays in the denominator
    assert metrics.mrr_at_k(q, r, 10, min_rel=1) == (1 / 2) / 2
    assert metrics.mrr_at_k(q, r, 10, min_rel=2) == (1 / 3) / 2
    res = run_eval(qrels, run, "--min_rel", "2")
    assert res.stdout.splitlines()[2] == f"MRR @10: {(1 / 3) / 2}"
    assert "grade" not in res.stderr  # the note is about the default reading only
    res = run_eval(qrels, run)
    assert res.stdout.splitlines()[2] == f"MRR @10: {(1 + 1) / 2}"
    note = [ln for ln in res.stderr.splitlines() if "grade" in ln]
    assert len(note) == 1 and "2 " in note[0] and "--min_rel" in note[0]


def official_mrr(qrels_path, run_path, k=10):
    """The official MS MARCO script's rule, written out slowly: every qrels line is a relevant passage;
    the candidate list is indexed by rank - 1; the sum runs over the run's queries that the qrels judge and
    is divided by the number of qrels queries."""
    relevant = {}
    for line in open(qrels_path):
        cols = line.split()
        relevant.setdefault(int(cols[0]), []).append(int(cols[2]))
    ranked = {}
    for line in open(run_path):
        q, p, r = map(int, line.split()[:3])
        ranked.setdefault(q, [0] * 1000)[r - 1] = p
    mrr = 0.0
    for q, cands in ranked.items():
        if q in relevant:
            for i in range(k):
                if cands[i] in relevant[q]:
                    mrr += 1 / (i + 1)
                    break
    return mrr / len(relevant), len(ranked)


@pytest.mark.slow
@pytest.mark.parametrize("parts", [("data", "msmarco-eval", "2019qrels-pass.txt"),
                                   ("data", "msmarco-eval", "2020qrels-pass.txt"),
                                   ("data", "cranfield", "passage", "2019qrels-pass.txt")])
def test_default_mrr_is_the_official_number_on_graded_qrels(tmp_path, parts):
    """Real graded qrels (TREC DL, and the Cranfield 2019qrels-pass.txt the pipeline turns into test-qrel.tsv)
    hold grade-0 lines; the default output is the official script's, and differs from --min_rel 1."""
    path = shared_path(*parts)
    qrels = metrics.read_qrels(str(path))
    assert metrics.zero_grade_lines(qrels) > 0
    # grade-0 pairs high in the ranking: where the two readings differ
    rng = random.Random(3)
    lines = []
    for q in sorted(qrels, key=int):
        judged = sorted(qrels[q], key=lambda p: (qrels[q][p], rng.random()))  # grade 0 first
        pids = judged[:3] + [f"{8_000_000 + i}" for i in range(5)] + judged[3:]
        rng.shuffle(pids)
        lines += [f"{q}\t{p}\t{i}" for i, p in enumerate(pids, 1)]
    run = write(tmp_path / "run.tsv", lines)
    want, ranked = official_mrr(path, run)
    res = run_eval(path, run)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2:4] == [f"MRR @10: {want}", f"QueriesRanked: {ranked}"]
    thresholded = run_eval(path, run, "--min_rel", "1").stdout.splitlines()[2]
    assert thresholded != f"MRR @10: {want}"
    note = [ln for ln in res.stderr.splitlines() if "grade" in ln]
    assert note == [note[0]] and f"{metrics.zero_grade_lines(qrels)} " in note[0]
    # the library number that prepare_hardneg prints is the same
    assert metrics.evaluate_run(str(path), str(run), recall_at=(), ndcg=False)["MRR @10"] == want


def test_evaluate_offsets_prints_the_official_number(tmp_path):
    import numpy as np

    from drhard.retrieval import evaluate_offsets
    qrels = write(tmp_path / "test-qrel.tsv", ["0\t0\t4\t0", "0\t0\t5\t2", "1\t0\t6\t1", "2\t0\t1\t0"])
    poffsets = np.array([[4, 5, 1], [1, 6, -1], [-1, -1, -1]])
    run = write(tmp_path / "test.rank.tsv", [f"{q}\t{p}\t{r}" for q, row in enumerate(poffsets)
                                             for r, p in enumerate([p for p in row if p >= 0], 1)])
    want, ranked = official_mrr(qrels, run)
    assert evaluate_offsets(str(qrels), poffsets, 10) == {"MRR @10": want, "QueriesRanked": ranked}
    assert want == (1 + 1 / 2) / 3 and ranked == 2


@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert metrics.recall_at_k(qrels, run, 100, min_rel=1) == pytest.approx((1 / 2 + 0) / 2)
    assert metrics.recall_at_k(qrels, run, 1000, min_rel=1) == pytest.approx((2 / 2 + 0) / 2)
    # trec_eval sees the order only: a gap in the rank values does not push b out of the top 2
    assert metrics.recall_at_k(qrels, {"1": {1: "a", 150: "b", 2: "n"}}, 2, min_rel=1) == pytest.approx(1 / 4)
    # default: relevant as for the official MRR, every judged pair (n too): a, n of a, b, n in the top 100
    assert metrics.recall_at_k(qrels, run, 100) == pytest.approx((2 / 3 + 0) / 2)
    # NDCG uses the grades whatever the relevance rule: grade 0 gains nothing
    assert metrics.ndcg_cut_10(qrels, {"1": ["n"]}) == 0


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
    # the default: every judged pair is relevant (as for the official MRR); slow reference
    slow_recall = sum(len(set(run.get(q, [])[:100]) & set(qrels[q])) / len(qrels[q]) for q in qrels) / 43
    assert metrics.recall_at_k(qrels, run, 100) == pytest.approx(slow_recall, abs=1e-12)
    assert metrics.recall_at_k(qrels, run, 100) != pytest.approx(metrics.recall_at_k(qrels, run, 100, min_rel=1))


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


@pytest.mark.parametrize("args,what", [
    (["--recall", "0"], "--recall: must be >= 1, got 0"),      # trec_eval aborted the process on recall.0
    (["--recall", "100", "-5"], "--recall: must be >= 1, got -5"),
    (["--recall", "x"], "invalid int value"),
])
@pytest.mark.slow
def test_flags_are_checked_at_the_door(small, args, what):
    qrels, run = small
    res = run_eval(qrels, run, *args)
    errors = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert res.returncode == 2 and res.stdout == ""
    assert len(errors) == 1 and what in errors[0] and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("which", ["reference", "candidate"])
def test_a_directory_for_a_file_is_a_usage_error(small, tmp_path, which):
    qrels, run = small
    args = [tmp_path, run] if which == "reference" else [qrels, tmp_path]
    res = run_eval(*args)
    errors = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert len(errors) == 1 and f"{tmp_path} is a directory" in errors[0]


@pytest.mark.slow
def test_a_missing_file_is_one_error_line(small, tmp_path):
    qrels, _ = small
    res = run_eval(qrels, tmp_path / "nope.tsv")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.tsv'}: file not found"
