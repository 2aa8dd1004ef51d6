"""Ranking metrics: MS MARCO MRR@K, Recall@K and TREC DL NDCG@10.

MRR@K follows the official MS MARCO evaluation script (``msmarco_eval.py``):

* the sum of ``1/rank`` of the first relevant passage within the top K is taken
  over the run's queries in run-file order and divided by the number of queries
  in the qrels (REF), so a query of REF that the run misses counts as 0, and a
  run query that REF does not judge is ignored;
* ``rank`` is the value of the rank column (1-based), not the line's position,
  so a gap in a run's ranks is a gap in the ranking, as in the official script;
* ``QueriesRanked`` is the number of distinct queries in the run.

The summation order and the final division are the official ones, so the
printed float is the same to the last digit.

Relevance.  The official script counts **every** qrels line as relevant,
whatever its grade, and so do we by default (``min_rel`` None): MS MARCO qrels
hold only label-1 lines, so nothing changes there, and on graded qrels (TREC DL
``2019qrels-pass.txt``, and the preprocess test qrels made from it, which hold
many grade-0 "judged non-relevant" lines) the MRR printed is the official
number.  Recall follows the same rule, so MRR and Recall agree on what is
relevant.  ``min_rel`` = g (``msmarco_eval.py --min_rel g``) is the opt-in
grade threshold: a pair is relevant for MRR and Recall when ``grade >= g``
(1: the TREC DL document convention; 2: the TREC DL passage convention for
binary measures).  ``zero_grade_lines`` counts the lines that the two readings
disagree on (``msmarco_eval.py`` says so on stderr).  Every query of REF stays in
the denominator, even one with no relevant line.

NDCG@10 and Recall@K are computed by ``pytrec_eval`` (trec_eval's
``ndcg_cut.10`` and ``recall.K``) with trec_eval's ``-c`` semantics: queries of
REF that are missing from the run count as 0.  NDCG always uses the grades as
gains (grade 0 gains nothing, whatever ``min_rel``); Recall is given the
relevance above as 1/0 judgments (every judged pair stays judged).  The run's order is
given to trec_eval as the score ``-rank``, so every measure sees the same order;
trec_eval counts positions in that order, so a gap in the rank values matters to
MRR (official semantics) but not to NDCG/Recall (trec_eval semantics).

Ids are kept as canonical strings: ``"123"`` or ``"D123"`` (leading zeros
dropped), so a ``D`` id never matches a bare number.  In ``doc`` mode every
passage id in both files must carry the ``D`` prefix, as in the original.

Run files may be ``qid pid rank`` (the MS MARCO / DRhard form) or TREC
``qid Q0 pid rank score tag``; the rank column decides the order in both.
Ranks above 1000 are accepted (the official script crashes on them).  A
duplicate ``(qid, pid)`` or ``(qid, rank)`` in a run is an error naming both
lines.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, Hashable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .io import DataError, data_error, iter_fields, parse_int, qrel_name

logger = logging.getLogger(__name__)

Qrels = Mapping[Hashable, Union[Mapping[Hashable, int], Iterable[Hashable]]]
Ranking = Union[Sequence[Hashable], Mapping[int, Hashable]]
Run = Mapping[Hashable, Ranking]

DEFAULT_K = 10
DOC_K = 100


# --------------------------------------------------------------------------- readers
def _iter_fields(path: str) -> Iterator[Tuple[int, List[str]]]:
    """``drhard.io.iter_fields`` with CRLF tolerated (some MS MARCO downloads use it and the official
    script strips it); a lone CR, a byte-order mark and bad UTF-8 are errors naming the line."""
    return iter_fields(path, crlf=True)


def _qid(path: str, lineno: int, value: str) -> str:
    if value.isdigit() and (value[0] != "0" or value == "0"):
        return value
    return str(parse_int(path, lineno, value, "query id"))


def _pid(path: str, lineno: int, value: str, doc: bool) -> str:
    if not doc and value.isdigit() and (value[0] != "0" or value == "0"):
        return value                                  # the common case, already canonical
    prefix = ""
    if value[:1] == "D":
        prefix, value = "D", value[1:]
    elif doc:
        raise data_error(path, lineno, f"document id {value!r} has no 'D' prefix, which the 'doc' mode "
                         "expects (for preprocess-offset files pass K=100 instead of 'doc')")
    if not value.isdigit():
        raise data_error(path, lineno, f"passage id {prefix + value!r} is not an integer")
    return prefix + str(int(value))


def read_qrels(path: str, doc: bool = False) -> "OrderedDict[str, Dict[str, int]]":
    """``qid 0|Q0 pid grade`` (tab or space separated) -> ``{qid: {pid: grade}}`` in file order.

    Reads MS MARCO qrels, preprocess offset qrels (``drhard.io.qrel_name``) and TREC
    qrels alike.  A repeated pair with the same grade is ignored; with another
    grade it is an error.
    """
    qrels: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    first: Dict[Tuple[str, str], int] = {}
    for lineno, cols in _iter_fields(path):
        if len(cols) != 4:
            raise data_error(path, lineno, f"expected 4 columns 'qid 0 pid grade', got {len(cols)}")
        qid = _qid(path, lineno, cols[0])
        pid = _pid(path, lineno, cols[2], doc)
        grade = parse_int(path, lineno, cols[3], "relevance grade")
        judged = qrels.setdefault(qid, {})
        if pid in judged and judged[pid] != grade:
            raise data_error(path, lineno, f"query {qid} passage {pid} judged again with grade {grade} "
                             f"(line {first[qid, pid]} gave {judged[pid]})")
        first.setdefault((qid, pid), lineno)
        judged[pid] = grade
    if not qrels:
        raise data_error(path, None, "no judgments (empty qrels file)")
    return qrels


def _parse_run_line(path: str, lineno: int, cols: List[str], doc: bool) -> Tuple[str, str, int]:
    if len(cols) == 3:
        q, p, r = cols
        if not doc and r.isdigit() and r[0] != "0" and q.isdigit() and q[0] != "0" and p.isdigit() \
                and (p[0] != "0" or p == "0"):
            return q, p, int(r)                       # the common case: canonical ids, rank >= 1
    elif len(cols) == 6:
        q, _, p, r, score, _ = cols
        try:
            float(score)
        except ValueError:
            raise data_error(path, lineno, f"score {score!r} is not a number") from None
    else:
        raise data_error(path, lineno, f"expected 'qid pid rank' or 'qid Q0 pid rank score tag', "
                         f"got {len(cols)} columns")
    rank = parse_int(path, lineno, r, "rank")
    if rank < 1:
        raise data_error(path, lineno, f"rank {rank} is not 1-based")
    return _qid(path, lineno, q), _pid(path, lineno, p, doc), rank


def _first_line(path: str, doc: bool, match) -> int:
    """Line number of the first run line for which ``match(qid, pid, rank)`` holds (error path)."""
    for lineno, cols in _iter_fields(path):
        if match(*_parse_run_line(path, lineno, cols, doc)):
            return lineno
    return 0


def read_run(path: str, doc: bool = False) -> "OrderedDict[str, Dict[int, str]]":
    """A run file -> ``{qid: {rank: pid}}``, queries in file order, ranks ascending.

    Accepts ``qid pid rank`` and TREC ``qid Q0 pid rank score tag`` lines.
    """
    runs: "OrderedDict[str, Dict[int, str]]" = OrderedDict()
    for lineno, cols in _iter_fields(path):
        qid, pid, rank = _parse_run_line(path, lineno, cols, doc)
        by_rank = runs.get(qid)
        if by_rank is None:
            by_rank = runs[qid] = {}
        elif rank in by_rank:
            first = _first_line(path, doc, lambda q, p, r: q == qid and r == rank)
            raise data_error(path, lineno, f"query {qid} has two passages at rank {rank} (also on line {first})")
        by_rank[rank] = pid
    for qid, by_rank in runs.items():
        if len(set(by_rank.values())) != len(by_rank):
            seen: Dict[str, int] = {}
            for lineno, cols in _iter_fields(path):
                q, p, _ = _parse_run_line(path, lineno, cols, doc)
                if q == qid and p in seen:
                    raise data_error(path, lineno, f"query {qid} ranks passage {p} twice "
                                     f"(also on line {seen[p]})")
                if q == qid:
                    seen[p] = lineno
    if not runs:
        raise data_error(path, None, "no ranked passages (empty run file)")
    for qid, by_rank in runs.items():
        if any(a > b for a, b in zip(by_rank, list(by_rank)[1:])):
            runs[qid] = dict(sorted(by_rank.items()))
    return runs


# --------------------------------------------------------------------------- measures
def _ranked(ranking: Ranking) -> Iterator[Tuple[int, Hashable]]:
    """``(rank, pid)`` pairs in rank order: a sequence is ranks 1.., a mapping is ``{rank: pid}``."""
    if isinstance(ranking, Mapping):
        return iter(sorted(ranking.items()))
    return enumerate(ranking, 1)


def relevant_sets(qrels: Qrels, min_rel: Optional[int] = None) -> Dict[Hashable, set]:
    """``{qid: set of relevant pids}``: every judged pid (``min_rel`` None, the official rule), or, for
    graded qrels, the pairs with ``grade >= min_rel``."""
    out = {}
    for qid, judged in qrels.items():
        if isinstance(judged, Mapping) and min_rel is not None:
            out[qid] = {p for p, g in judged.items() if g >= min_rel}
        else:
            out[qid] = set(judged)
    return out


def zero_grade_lines(qrels: Qrels) -> int:
    """Judged pairs with a grade below 1 (relevant for the official MRR, non-relevant for NDCG)."""
    return sum(1 for judged in qrels.values() if isinstance(judged, Mapping) for g in judged.values() if g < 1)


def mrr_at_k(qrels: Qrels, run: Run, k: int = DEFAULT_K, min_rel: Optional[int] = None) -> float:
    """MS MARCO MRR@k, summed in run order and divided by the number of qrels queries."""
    if k < 1:
        raise ValueError(f"MRR cut-off must be >= 1, got {k}")
    relevant = relevant_sets(qrels, min_rel)
    if not relevant:
        raise ValueError("no qrels queries")
    mrr = 0
    for qid, ranking in run.items():
        rel = relevant.get(qid)
        if rel is None:
            continue
        for rank, pid in _ranked(ranking):
            if rank > k:
                break
            if pid in rel:
                mrr += 1 / rank
                break
    return mrr / len(relevant)


def _trec_inputs(qrels: Qrels, run: Run, min_rel: Optional[int], binary: bool):
    """String-keyed qrels/run for pytrec_eval; REF queries missing from the run get an empty
    ranking (a placeholder id that no qrels holds), which is trec_eval's ``-c``.

    ``binary``: judgments are 1 (relevant by ``relevant_sets(qrels, min_rel)``) or 0;
    otherwise the grades (1 for an ungraded qrels).
    """
    relevant = relevant_sets(qrels, min_rel) if binary else None
    tq: Dict[str, Dict[str, int]] = {}
    for qid, judged in qrels.items():
        if binary:
            tq[str(qid)] = {str(p): int(p in relevant[qid]) for p in judged}
        elif isinstance(judged, Mapping):
            tq[str(qid)] = {str(p): int(g) for p, g in judged.items()}
        else:
            tq[str(qid)] = {str(p): 1 for p in judged}
    tr: Dict[str, Dict[str, float]] = {}
    for qid, ranking in run.items():
        if str(qid) in tq:
            tr[str(qid)] = {str(p): -float(r) for r, p in _ranked(ranking)}
    for qid in tq:
        if not tr.get(qid):
            tr[qid] = {"drhard:no-passage-retrieved": 0.0}
    return tq, tr


def trec_measures(qrels: Qrels, run: Run, measures: Sequence[str],
                  min_rel: Optional[int] = None) -> Dict[str, float]:
    """Mean of trec_eval measures (pytrec_eval names, e.g. ``ndcg_cut.10``, ``recall.100``)
    over every qrels query (``-c``).  ``recall.*`` sees the relevance of ``relevant_sets(qrels,
    min_rel)``; every other measure sees the grades."""
    import pytrec_eval

    out = {}
    for binary in (True, False):
        group = [m for m in measures if m.startswith("recall.") == binary]
        if not group:
            continue
        tq, tr = _trec_inputs(qrels, run, min_rel, binary)
        per_query = pytrec_eval.RelevanceEvaluator(tq, set(group), relevance_level=1).evaluate(tr)
        for m in group:
            key = m.replace(".", "_")
            out[m] = sum(v[key] for v in per_query.values()) / len(tq)
    return out


def recall_at_k(qrels: Qrels, run: Run, k: int = 100, min_rel: Optional[int] = None) -> float:
    """trec_eval ``recall.k`` (relevant retrieved in the top k / relevant), ``-c``."""
    return trec_measures(qrels, run, [f"recall.{int(k)}"], min_rel)[f"recall.{int(k)}"]


def ndcg_cut_10(qrels: Qrels, run: Run) -> float:
    """TREC DL NDCG@10: trec_eval ``ndcg_cut.10`` with ``-c`` (graded gains, log2 discount)."""
    return trec_measures(qrels, run, ["ndcg_cut.10"])["ndcg_cut.10"]


# --------------------------------------------------------------------------- sanity checks
def _dense_from_zero(ids: Iterable[Hashable]) -> bool:
    """True when the ids are the integers 0..N-1 (or nearly): the shape of preprocess offsets."""
    nums = []
    for i in ids:
        s = str(i)
        if not s.isdigit():
            return False
        nums.append(int(s))
    if len(nums) < 2 or min(nums) != 0:
        return False
    return len(set(nums)) >= 0.9 * (max(nums) + 1)


def id_scheme_warnings(qrels: Qrels, run: Run, k: int = DEFAULT_K, min_rel: Optional[int] = None,
                       ref_name: str = "REF", run_name: str = "RUN") -> List[str]:
    """Messages for a run whose ids do not look like the qrels' ids.

    The classic mistake: scoring a run of preprocess offsets (``qoffset pid``)
    against official MS MARCO qrels, or the reverse.  It gives an MRR near 0
    instead of an error, so we say so loudly.
    """
    msgs = []
    ref_q, run_q = set(qrels), set(run)
    common = ref_q & run_q
    hint = (f"offsets are preprocess rows: score them against <preprocess_dir>/{qrel_name('<mode>')}, "
            "or convert the run back to official ids with cvt_back.py first")
    if len(common) < 0.5 * len(ref_q):
        msg = (f"only {len(common)} of the {len(ref_q)} queries of {ref_name} are ranked in {run_name} "
               f"({len(run_q)} queries); the missing ones count as 0")
        run_off, ref_off = _dense_from_zero(run_q), _dense_from_zero(ref_q)
        if run_off and not ref_off:
            msg += (f". The run's query ids look like preprocess offsets (0..{len(run_q) - 1}) but the "
                    f"qrels' do not: {hint}")
        elif ref_off and not run_off:
            msg += (". The qrels' query ids look like preprocess offsets but the run's do not: "
                    f"{hint}")
        msgs.append(msg)
    if len(common) >= 10:
        relevant = relevant_sets({q: qrels[q] for q in common}, min_rel)
        hits = sum(1 for q in common for _, p in _ranked(run[q]) if p in relevant[q])
        if hits == 0:
            msgs.append(f"no passage ranked in {run_name} is relevant for any of the {len(common)} "
                        f"shared queries: do the run and {ref_name} use the same passage ids "
                        f"(official ids vs preprocess offsets, 'D' prefixes)? {hint}")
    return msgs


# --------------------------------------------------------------------------- files -> numbers
def metric_name_mrr(k: int) -> str:
    return f"MRR @{k}"


def evaluate(qrels: Qrels, run: Run, k: int = DEFAULT_K, min_rel: Optional[int] = None,
             recall_at: Sequence[int] = (), ndcg: bool = False) -> Dict[str, float]:
    """The numbers ``msmarco_eval.py`` prints, keyed by their printed names.

    Always ``MRR @k`` and ``QueriesRanked``; ``Recall @c`` for each ``c`` in
    ``recall_at`` and ``NDCG @10`` when asked.
    """
    if not set(qrels) & set(run):
        raise DataError("no query of the run is in the qrels. Are you sure you are scoring the "
                        "evaluation set (and with the same id scheme)?")
    out: Dict[str, float] = {metric_name_mrr(k): mrr_at_k(qrels, run, k, min_rel),
                             "QueriesRanked": len(run)}
    measures = [f"recall.{int(c)}" for c in recall_at] + (["ndcg_cut.10"] if ndcg else [])
    if measures:
        trec = trec_measures(qrels, run, measures, min_rel)
        for c in recall_at:
            out[f"Recall @{int(c)}"] = trec[f"recall.{int(c)}"]
        if ndcg:
            out["NDCG @10"] = trec["ndcg_cut.10"]
    return out


def evaluate_run(qrels_path: str, run_path: str, k: int = DEFAULT_K, doc: bool = False,
                 min_rel: Optional[int] = None, recall_at: Sequence[int] = (100,), ndcg: bool = True,
                 check_ids: bool = True) -> Dict[str, float]:
    """Read ``qrels_path`` and ``run_path`` and return every number (MRR@k, QueriesRanked,
    Recall@100 and NDCG@10 by default).  Id-scheme warnings go to this module's logger."""
    qrels = read_qrels(qrels_path, doc=doc)
    run = read_run(run_path, doc=doc)
    if check_ids:
        for msg in id_scheme_warnings(qrels, run, k, min_rel, qrels_path, run_path):
            logger.warning(msg)
    return evaluate(qrels, run, k, min_rel, recall_at, ndcg)


def format_report(metrics: Mapping[str, float]) -> str:
    """The official report lines (without ``Eval Started``): ``#`` rule, sorted metrics, ``#`` rule."""
    lines = ["#####################"]
    lines += ["{}: {}".format(name, metrics[name]) for name in sorted(metrics)]
    lines.append("#####################")
    return "\n".join(lines) + "\n"

