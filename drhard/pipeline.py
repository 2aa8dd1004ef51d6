"""The paper's whole pipeline as a sequence of real script calls, with reusable stages.

Each stage runs one of the project's scripts in a subprocess (the same
commands a user would type), logs to ``<work_dir>/logs/<stage>.log``, and on
success writes ``<work_dir>/stages/<stage>.json`` (command + wall time).  A
rerun skips a stage whose marker holds the same command; the scripts' own
outputs are atomic, so a killed stage simply runs again.
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

from .io import atomic_write

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    script: str  # path relative to the repository root
    args: List[str] = field(default_factory=list)

    def command(self) -> List[str]:
        return [sys.executable, os.path.join(REPO, self.script), *map(str, self.args)]

    def display(self) -> str:
        return " ".join(["python", self.script, *map(str, self.args)])


class StageRunner:
    def __init__(self, work_dir: str, env: Optional[Dict[str, str]] = None, echo=print):
        self.work_dir = work_dir
        self.marker_dir = os.path.join(work_dir, "stages")
        self.log_dir = os.path.join(work_dir, "logs")
        os.makedirs(self.marker_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
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
            proc = subprocess.run(stage.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        seconds = time.time() - t0
        if proc.returncode != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            raise StageFailed(f"stage {stage.name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
        with atomic_write(self.marker(stage.name)) as f:
            json.dump({"command": stage.display(), "seconds": seconds}, f)
        self.times[stage.name] = seconds
        self.echo(f"{prefix}{stage.name}: done in {seconds:.1f} s")
        return seconds


def format_table(rows: Sequence[dict], k: int) -> str:
    """A markdown table shaped like the paper's."""
    head = f"| method | Dev MRR@{k} | Dev R@100 | Test NDCG@10 | Train MRR@{k} | wall time (s) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dev_mrr']:.3f} | {r['dev_recall100']:.3f} | {r['test_ndcg10']:.3f} | "
                     f"{r['train_mrr']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)
