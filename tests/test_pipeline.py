"""The built-in dataset, the quickstart's sanity check, and the full-scale recipe's dry run."""
import re
import subprocess
import sys

import pytest

from conftest import REPO
from drhard.io import read_offset_qrels
from drhard.rawdata import dataset_files, read_collection, read_queries
from drhard.sample_data import build_task, split_sentences, write_sample_dataset


def test_sample_task_is_a_real_retrieval_task():
    task = build_task()
    assert len(task.passages) > 500 and sum(len(q) for q in task.queries.values()) > 400
    for split in ("train", "dev", "test"):
        for (qid, text), (qid2, pid, grade) in zip(task.queries[split],
                                                   [r for r in task.qrels[split] if r[2] >= (3 if split == "test" else 1)]):
            assert qid == qid2
            # the query sentence was removed from its positive passage, and the passage is not empty
            assert text not in task.passages[pid] and task.passages[pid].strip()
    # every split is disjoint and deterministic
    ids = [q for s in task.queries.values() for q, _ in s]
    assert len(ids) == len(set(ids))
    assert build_task().queries == task.queries
    # graded test qrels: the positive is grade 3, topic neighbours grade 1, all from the same topic
    for qid, pid, g in task.qrels["test"]:
        assert g in (1, 3)
    assert split_sentences("One sentence here. Another one? Yes.") == ["One sentence here.", "Another one?", "Yes."]


@pytest.mark.parametrize("kind", ["passage", "doc"])
def test_sample_dataset_files_parse_in_msmarco_layout(tmp_path, kind):
    dirs = write_sample_dataset(str(tmp_path))
    files = dataset_files(dirs[kind], kind)
    pids = [p for p, _ in read_collection(files["collection"], kind)]
    assert pids == list(range(len(pids)))
    for mode in ("train", "dev", "test"):
        qids = {q for q, _ in read_queries(files[f"{mode}_queries"])}
        rels = read_offset_qrels(files[f"{mode}_qrels"].replace("D", "")) if kind == "passage" else None
        if rels is not None:
            assert set(rels) == qids
    assert {q for q, _ in read_queries(files["lead_queries"])} == {q for q, _ in read_queries(files["test_queries"])}


def test_check_results_flags_bad_tables():
    from drhard.commands import quickstart
    names = ["untrained init", "Inbatch-Neg", "Rand-Neg", "BM25-Neg", "ADORE (Inbatch-Neg)", "STAR", "ADORE (STAR)"]
    good = [{"method": n, "dev_mrr": 0.1, "dev_recall100": 0.5, "test_ndcg10": 0.2, "train_mrr": 0.1 + i / 100}
            for i, n in enumerate(names)]
    assert quickstart.check_results(good) == []
    bad = [dict(r) for r in good]
    bad[5]["train_mrr"] = 0.05
    bad[2]["dev_mrr"] = 1.5
    problems = quickstart.check_results(bad[:-1])
    assert any("STAR: train MRR" in p for p in problems)
    assert any("Rand-Neg: dev_mrr" in p for p in problems)
    assert any("rows" in p for p in problems)


@pytest.mark.slow
def test_dry_run_prints_every_readme_full_scale_command_in_order():
    out = subprocess.run([sys.executable, str(REPO / "reproduce.py"), "--data_type", "passage", "--gpus", "4",
                          "--dry_run"], capture_output=True, text=True, check=True).stdout.splitlines()
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Reproducing the paper at full scale", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    inline = re.findall(r"`((?:bash|python) [^`]+)`", section)
    readme_cmds = [c for c in inline if not c.startswith("python reproduce.py") and "--dry_run" not in c]
    readme_cmds += [line.strip() for b in blocks for line in b.splitlines() if line.strip()]
    readme_cmds.sort(key=section.index)  # the order they appear in the section
    assert len(readme_cmds) >= 15
    pos = -1
    for cmd in readme_cmds:
        assert cmd in out, f"README command missing from --dry_run: {cmd}"
        assert out.index(cmd) > pos, f"out of order: {cmd}"
        pos = out.index(cmd)


@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
def test_recipe_trains_star_on_one_gpu_with_the_papers_schedule(gpus):
    """STAR and the warmups: stopped at step 50k of the 100-epoch schedule (not --max_steps, which would decay
    the rate to 0 there), pinned to GPU 0 when the machine has several (no DataParallel, the paper's one GPU)."""
    from drhard.commands import reproduce
    train = [c for c in reproduce.commands("passage", gpus) if "star/train.py" in c]
    assert len(train) == 4  # BM25-Neg warmup, Inbatch-Neg, Rand-Neg, STAR
    for cmd in train:
        assert "--stop_at_step 50000" in cmd and "--max_steps" not in cmd and "--num_train_epochs" not in cmd
        assert cmd.startswith("CUDA_VISIBLE_DEVICES=0 python ./star/train.py" if gpus > 1 else "python ./star/train.py")
