"""The paper's pipeline, described once: its stages in order, and a runner that reuses finished stages.

``paper_stages(plan, rows)`` is the one description of the pipeline: preprocess ->
BM25 negatives -> the BM25-Neg warmup -> prepare_hardneg -> the warmup baselines and STAR
-> ADORE on them, with inference (and evaluation) after each trained model.  A ``Plan``
spells each stage's flags and folders: ``FullScalePlan`` the README's full-scale commands on
MS MARCO (``reproduce.py`` prints or runs them), ``QuickstartPlan`` the miniature run of
``quickstart.py`` in one work folder.

A ``Stage`` runs a command of ``drhard.commands`` as a module (``python -m
drhard.commands.star_train ...``), so the pipeline needs no checkout, only the installed
package; ``Stage.display()`` shows it as the README does (``python ./star/train.py ...``).
A few full-scale steps are shell lines (``bash download_data.sh``, copying a model).

``StageRunner`` logs each stage to ``<work_dir>/logs/<stage>.log`` and on success writes
``<work_dir>/stages/<stage>.json`` (command + wall time).  A rerun skips a stage whose
marker holds the same command; the commands' own outputs are atomic, so a killed stage
simply runs again.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .commands import COMMANDS
from .io import atomic_write, hard_json_path, passage_embedding_path, qrel_path, rank_path
from .rawdata import INPUT_FILES

logger = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    """One step: a command of ``drhard.commands`` with its arguments, or a shell line."""
    name: str
    command: Optional[str]  # a key of drhard.commands.COMMANDS; None for a shell line
    args: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # set for the step (shown before it, as in the README)
    shell: Optional[str] = None

    def __post_init__(self):
        self.args = [str(a) for a in self.args]

    def argv(self) -> List[str]:
        """What runs: ``python -m drhard.commands.<name> args`` (this interpreter)."""
        return [sys.executable, "-m", COMMANDS[self.command].module, *self.args]

    def display(self) -> str:
        """The step as the README writes it: ``[VAR=value ]python ./star/train.py args``, or the shell line."""
        env = "".join(f"{k}={v} " for k, v in self.env.items())
        if self.command is None:
            return env + str(self.shell)
        return env + " ".join(["python", COMMANDS[self.command].script, *self.args])


# --------------------------------------------------------------------------- the description
@dataclass(frozen=True)
class Row:
    """A row of the paper's table: the model ``name`` and, for ADORE, the ``base`` model it starts from."""
    name: str
    method: str
    base: Optional[str] = None


WARMUP = Row("bm25", "BM25-Neg")  # trained on BM25 negatives; its hard negatives train STAR
BASELINES = (Row("inbatch", "Inbatch-Neg"), Row("random", "Rand-Neg"))
STAR = Row("star", "STAR")
ADORE = (Row("adore-inbatch", "ADORE (Inbatch-Neg)", "inbatch"), Row("adore-random", "ADORE (Rand-Neg)", "random"),
         Row("adore-star", "ADORE (STAR)", "star"))
ROWS = tuple(r.name for r in BASELINES + (STAR,) + ADORE)  # the rows a run may ask for


class Plan:
    """How one kind of run spells each stage; a method returns the stages of one step ([] to leave it out)."""

    def data(self) -> List[Stage]:
        return []

    def preprocess(self) -> List[Stage]:
        raise NotImplementedError

    def untrained(self) -> List[Stage]:
        return []

    def bm25_negatives(self) -> List[Stage]:
        raise NotImplementedError

    def train(self, row: Row) -> List[Stage]:
        raise NotImplementedError

    def prepare_hardneg(self) -> List[Stage]:
        raise NotImplementedError

    def evaluate(self, row: Row) -> List[Stage]:
        raise NotImplementedError

    def adore_train(self, row: Row) -> List[Stage]:
        raise NotImplementedError

    def official_run(self, row: Row) -> List[Stage]:
        return []


def paper_stages(plan: Plan, rows: Sequence[str] = ROWS) -> List[Stage]:
    """Every stage of the paper's pipeline for the table ``rows`` (names of ``ROWS``), in order.

    The BM25-Neg warmup and ``prepare_hardneg`` always run (STAR needs them); a warmup
    baseline is trained when it or ADORE on it is asked for.
    """
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; the rows are {', '.join(ROWS)}")
    wanted = set(rows) | {r.base for r in ADORE if r.name in rows}
    stages = plan.data() + plan.preprocess() + plan.untrained() + plan.bm25_negatives()
    stages += plan.train(WARMUP) + plan.evaluate(WARMUP) + plan.prepare_hardneg()
    for row in BASELINES + (STAR,):
        if row.name in wanted:
            stages += plan.train(row) + plan.evaluate(row)
    for row in ADORE:
        if row.name in rows:
            stages += plan.adore_train(row) + plan.evaluate(row)
    for row in ADORE:
        if row.name in rows:
            stages += plan.official_run(row)
    return stages


def _star_train_args(query_len, doc_len, preprocess_dir, negatives: List, init, output_dir, logging_dir,
                     *tail) -> List:
    """star/train.py's arguments in the README's order."""
    return ["--do_train", "--max_query_length", query_len, "--max_doc_length", doc_len,
            "--preprocess_dir", preprocess_dir, *negatives, "--init_path", init, "--output_dir", output_dir,
            "--logging_dir", logging_dir, *tail]


class FullScalePlan(Plan):
    """The README's full-scale commands on MS MARCO (``./data/<type>/...``; --gpus picks the device flags).

    0 = CPU only (no --fp16, CPU faiss), 1 = model and index share one GPU, 2 = model on GPU 0
    and index on GPU 1, 4 = index sharded over GPUs 1-3 (the original README's layout).  STAR
    and the warmups train on GPU 0 alone, as in the paper (``CUDA_VISIBLE_DEVICES=0`` when
    ``gpus > 1``), with the paper's schedule: 100 epochs planned, stopped at step 50,000.
    """

    EVAL_MODES = ("dev", "test")

    def __init__(self, data_type: str, gpus: int):
        if gpus not in (0, 1, 2, 4):
            raise ValueError(f"gpus must be 0, 1, 2 or 4, got {gpus}")
        self.data_type, self.gpus = data_type, gpus
        self.doc = data_type == "doc"
        self.d = f"./data/{data_type}"
        self.max_doc = 512 if self.doc else 256
        self.train_doc = 512 if self.doc else 120
        self.one_gpu = {"CUDA_VISIBLE_DEVICES": "0"} if gpus > 1 else {}
        self.faiss = {0: [], 1: ["--faiss_gpus", 0], 2: ["--faiss_gpus", 1], 4: ["--faiss_gpus", 1, 2, 3]}[gpus]
        self.faiss_adore = {0: [], 1: ["--model_gpu_index", 0, "--faiss_gpu_index", 0],
                            2: ["--model_gpu_index", 0, "--faiss_gpu_index", 1],
                            4: ["--model_gpu_index", 0, "--faiss_gpu_index", 1, 2, 3]}[gpus]

    def model_dir(self, row: Row) -> str:
        """Where a row's trained model is read from (the README copies STAR and ADORE to trained_models/)."""
        if row.name == WARMUP.name:
            return f"{self.d}/warmup"
        if row.name == STAR.name or row.base:
            return f"{self.d}/trained_models/{row.name}"
        return f"{self.d}/{row.name}_train/models"

    def data(self) -> List[Stage]:
        return [Stage("download", None, shell=f"bash download_data.sh --{self.data_type}")]

    def preprocess(self) -> List[Stage]:
        return [Stage("preprocess", "preprocess", ["--data_type", 0 if self.doc else 1])]

    def bm25_negatives(self) -> List[Stage]:
        return [Stage("bm25_negatives", "star_bm25_hardneg", ["--data_type", self.data_type, "--topk", 200])]

    def train(self, row: Row) -> List[Stage]:
        d = self.d
        tail = ["--optimizer_str", "lamb", "--learning_rate", "1e-4", "--stop_at_step", 50000]
        tail += ["--gradient_checkpointing", "--fp16"] if self.gpus > 0 else []
        if row == WARMUP:  # the BM25-Neg warmup from roberta-base (or put ANCE's warmup in ./data/<type>/warmup)
            negatives, init, out, log = (["--hardneg_path", hard_json_path(f"{d}/bm25_retrieve")], "roberta-base",
                                         f"{d}/warmup", f"{d}/warmup_log")
        elif row == STAR:
            negatives, init = ["--hardneg_path", hard_json_path(f"{d}/warmup_retrieve")], f"{d}/warmup"
            out, log = f"{d}/star_train/models", f"{d}/star_train/log"
        else:
            negatives, init = ["--negative_type", row.name], "roberta-base"
            out, log = f"{d}/{row.name}_train/models", f"{d}/{row.name}_train/log"
        args = _star_train_args(24, self.train_doc, f"{d}/preprocess", negatives, init, out, log, *tail)
        stages = [Stage(f"train_{row.name}", "star_train", args, env=dict(self.one_gpu))]
        if row == STAR:
            stages.append(self._publish(row, out))
        return stages

    def _publish(self, row: Row, model: str) -> Stage:
        target = f"{self.d}/trained_models"
        return Stage(f"publish_{row.name}", None, shell=f"mkdir -p {target} && cp -r {model} {target}/{row.name}")

    def prepare_hardneg(self) -> List[Stage]:
        return [Stage("prepare_hardneg", "star_prepare_hardneg",
                      ["--data_type", self.data_type, "--max_query_length", 32, "--max_doc_length", self.max_doc,
                       "--mode", "dev", "--topk", 200] + (["--not_faiss_cuda"] if self.gpus == 0 else []))]

    def evaluate(self, row: Row) -> List[Stage]:
        if row == WARMUP:
            return []  # prepare_hardneg prints the warmup's dev MRR
        d = self.d
        stages = []
        for mode in self.EVAL_MODES:
            if row.base:
                args = ["--model_dir", self.model_dir(row), "--output_dir", f"{d}/evaluate/{row.name}",
                        "--preprocess_dir", f"{d}/preprocess", "--mode", mode,
                        "--dmemmap_path", passage_embedding_path(f"{d}/evaluate/{row.base}"), *self.faiss]
                stages.append(Stage(f"inference_{row.name}_{mode}", "adore_inference", args))
                continue
            where = [] if row == STAR else ["--model_path", self.model_dir(row),
                                            "--output_dir", f"{d}/evaluate/{row.name}"]
            stages.append(Stage(f"inference_{row.name}_{mode}", "star_inference",
                                ["--data_type", self.data_type, "--max_doc_length", self.max_doc, "--mode", mode,
                                 *where, *self.faiss]))
        k = [100] if self.doc else []
        extra = {"dev": ["--recall", 100], "test": ["--ndcg"]}
        for mode in self.EVAL_MODES:
            stages.append(Stage(f"evaluate_{row.name}_{mode}", "msmarco_eval",
                                [qrel_path(f"{d}/preprocess", mode), rank_path(f"{d}/evaluate/{row.name}", mode),
                                 *k, *extra[mode]]))
        return stages

    def adore_train(self, row: Row) -> List[Stage]:
        d = self.d
        base = Row(row.base, "")
        out = f"{d}/{row.name}_train/models"
        args = ["--metric_cut", 200, "--init_path", self.model_dir(base),
                "--pembed_path", passage_embedding_path(f"{d}/evaluate/{row.base}"), "--model_save_dir", out,
                "--log_dir", f"{d}/{row.name}_train/log", "--preprocess_dir", f"{d}/preprocess", *self.faiss_adore]
        return [Stage(f"train_{row.name}", "adore_train", args), self._publish(row, f"{out}/epoch-6")]

    def official_run(self, row: Row) -> List[Stage]:
        if row.name != "adore-star":
            return []
        d = self.d
        out = f"{d}/official_runs/{row.name}"
        return [Stage(f"cvt_back_{row.name}", "cvt_back",
                      ["--input_dir", f"{d}/evaluate/{row.name}/", "--preprocess_dir", f"{d}/preprocess",
                       "--output_dir", out, "--mode", "dev", "--dataset", self.data_type]),
                Stage(f"evaluate_official_{row.name}", "msmarco_eval",
                      [f"{d}/dataset/{INPUT_FILES[self.data_type]['dev'][1]}", rank_path(out, "dev")]
                      + (["doc"] if self.doc else []))]


@dataclass
class QuickstartPlan(Plan):
    """The pipeline in miniature in one work folder, every flag explicit (``quickstart.py``).

    Every row is also embedded for its training queries, and the untrained init is a row of its
    own; evaluation is left to the caller (it reads the rank files).  ADORE runs with
    ``--overwrite_output_dir``, so a rerun after a failed stage starts that run afresh.
    """
    work: str
    data_dir: str
    init: str
    data_type: str = "passage"
    max_doc_length: int = 128  # passage/doc tokens: preprocess width and training/inference cut
    max_query_length: int = 32
    batch_size: int = 32
    learning_rate: float = 1e-3
    adore_learning_rate: float = 5e-4
    optimizer: str = "lamb"
    epochs: Dict[str, int] = field(default_factory=lambda: {"warmup": 15, "star": 15, "adore": 4})
    threads: int = 1
    seed: int = 42
    modes: Sequence[str] = ("dev", "test", "train")

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def model_dir(self, row: Row) -> str:
        if row.name == "init":
            return self.init
        if row.base:
            return self.path("models", row.name, f"epoch-{self.epochs['adore']}")
        return self.path("models", row.name)

    def preprocess(self) -> List[Stage]:
        return [Stage("preprocess", "preprocess",
                      ["--data_type", 0 if self.data_type == "doc" else 1, "--data_dir", self.data_dir,
                       "--out_data_dir", self.path("preprocess"), "--model_name_or_path", self.init,
                       "--max_seq_length", self.max_doc_length, "--max_query_length", self.max_query_length,
                       "--threads", self.threads])]

    def untrained(self) -> List[Stage]:
        return self.evaluate(Row("init", "untrained init"))

    def bm25_negatives(self) -> List[Stage]:
        return [Stage("bm25_negatives", "star_bm25_hardneg",
                      ["--data_type", self.data_type, "--data_dir", self.data_dir, "--preprocess_dir",
                       self.path("preprocess"), "--output_dir", self.path("bm25_retrieve"), "--topk", 100])]

    def train(self, row: Row) -> List[Stage]:
        if row == WARMUP:
            init, epochs = self.init, self.epochs["warmup"]
            negatives = ["--negative_type", "star", "--hardneg_path", hard_json_path(self.path("bm25_retrieve"))]
        elif row == STAR:
            init, epochs = self.model_dir(WARMUP), self.epochs["star"]
            negatives = ["--negative_type", "star", "--hardneg_path", hard_json_path(self.path("warmup_retrieve"))]
        else:
            init, epochs = self.init, self.epochs["warmup"]
            negatives = ["--negative_type", row.name] + (["--hard_num", 2] if row.name == "random" else [])
        args = _star_train_args(self.max_query_length, self.max_doc_length, self.path("preprocess"), [], init,
                                self.model_dir(row), self.path("tensorboard", row.name),
                                "--overwrite_output_dir", "--optimizer_str", self.optimizer, "--learning_rate",
                                self.learning_rate, "--per_device_train_batch_size", self.batch_size,
                                "--num_train_epochs", epochs, "--warmup_steps", 10, "--logging_steps", 10,
                                "--save_strategy", "no", "--seed", self.seed, *negatives)
        return [Stage(f"train_{row.name}", "star_train", args)]

    def prepare_hardneg(self) -> List[Stage]:
        return [Stage("prepare_hardneg", "star_prepare_hardneg",
                      ["--data_type", self.data_type, "--mode", "train", "--topk", 100,
                       "--max_query_length", self.max_query_length, "--max_doc_length", self.max_doc_length,
                       "--model_path", self.model_dir(WARMUP), "--preprocess_dir", self.path("preprocess"),
                       "--output_dir", self.path("warmup_retrieve")])]

    def evaluate(self, row: Row) -> List[Stage]:
        stages = []
        for mode in self.modes:
            if row.base:
                args = ["--model_dir", self.model_dir(row), "--output_dir", self.path("evaluate", row.name),
                        "--preprocess_dir", self.path("preprocess"), "--mode", mode,
                        "--dmemmap_path", passage_embedding_path(self.path("evaluate", row.base)),
                        "--max_seq_length", self.max_query_length, "--topk", 100]
                stages.append(Stage(f"inference_{row.name}_{mode}", "adore_inference", args))
            else:
                args = ["--data_type", self.data_type, "--mode", mode, "--model_path", self.model_dir(row),
                        "--preprocess_dir", self.path("preprocess"), "--output_dir", self.path("evaluate", row.name),
                        "--max_query_length", self.max_query_length, "--max_doc_length", self.max_doc_length,
                        "--topk", 100]
                stages.append(Stage(f"inference_{row.name}_{mode}", "star_inference", args))
        return stages

    def adore_train(self, row: Row) -> List[Stage]:
        base = Row(row.base, "")
        args = ["--metric_cut", 200, "--init_path", self.model_dir(base),
                "--pembed_path", passage_embedding_path(self.path("evaluate", row.base)),
                "--model_save_dir", self.path("models", row.name), "--log_dir", self.path("tensorboard", row.name),
                "--preprocess_dir", self.path("preprocess"), "--max_seq_length", self.max_query_length,
                "--per_gpu_batch_size", self.batch_size, "--num_train_epochs", self.epochs["adore"],
                "--warmup_steps", 10, "--logging_steps", 5, "--learning_rate", self.adore_learning_rate,
                "--seed", self.seed, "--overwrite_output_dir"]
        return [Stage(f"train_{row.name}", "adore_train", args)]


# --------------------------------------------------------------------------- running
def package_root() -> str:
    """The folder that holds the ``drhard`` package (added to the stages' ``PYTHONPATH``, so that
    ``python -m drhard.commands...`` finds the same package in a checkout that is not installed)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StageRunner:
    def __init__(self, work_dir: str, env: Optional[Dict[str, str]] = None, echo=print):
        self.work_dir = work_dir
        self.marker_dir = os.path.join(work_dir, "stages")
        self.log_dir = os.path.join(work_dir, "logs")
        os.makedirs(self.marker_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.env = stage_env(env)
        self.echo = echo
        self.times: Dict[str, float] = {}

    def marker(self, name: str) -> str:
        return os.path.join(self.marker_dir, f"{name}.json")

    def done(self, stage: Stage) -> Optional[dict]:
        path = self.marker(stage.name)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return info if info.get("command") == stage.display() else None

    def run(self, stage: Stage, index: int = 0, total: int = 0) -> float:
        prefix = f"[{index}/{total}] " if total else ""
        info = self.done(stage)
        if info is not None:
            self.times[stage.name] = info["seconds"]
            self.echo(f"{prefix}{stage.name}: reused ({info['seconds']:.1f} s when it ran)")
            return info["seconds"]
        self.echo(f"{prefix}{stage.name}: {stage.display()}")
        log_path = os.path.join(self.log_dir, f"{stage.name}.log")
        t0 = time.time()
        with open(log_path, "w", encoding="utf-8") as log:
            rc = run_stage(stage, self.env, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.time() - t0
        if rc != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            raise StageFailed(f"stage {stage.name} failed (exit {rc}); log {log_path}:\n{tail}")
        with atomic_write(self.marker(stage.name)) as f:
            json.dump({"command": stage.display(), "seconds": seconds}, f)
        self.times[stage.name] = seconds
        self.echo(f"{prefix}{stage.name}: done in {seconds:.1f} s")
        return seconds


def stage_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment for the stages, with the package on ``PYTHONPATH``."""
    env = dict(os.environ, **(extra or {}))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([package_root()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_stage(stage: Stage, env: Optional[Dict[str, str]] = None, **popen) -> int:
    """Run one stage in the current folder: the command module, or the shell line; its exit status."""
    env = dict(env or stage_env(), **stage.env)
    if stage.command is None:
        return subprocess.run(stage.shell, shell=True, env=env, **popen).returncode
    return subprocess.run(stage.argv(), env=env, **popen).returncode


def format_table(rows: Sequence[dict], k: int) -> str:
    """A markdown table shaped like the paper's."""
    head = f"| method | Dev MRR@{k} | Dev R@100 | Test NDCG@10 | Train MRR@{k} | wall time (s) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dev_mrr']:.3f} | {r['dev_recall100']:.3f} | {r['test_ndcg10']:.3f} | "
                     f"{r['train_mrr']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)
