"""The full-scale recipe: reproduce the paper's table on MS MARCO, command by command.

    python reproduce.py --data_type passage --gpus 4 --dry_run    # print every command, in order
    python reproduce.py --data_type passage --gpus 4              # run them (days on GPUs; see README)

The commands are the ones in README.md ("Reproducing the paper at full scale"),
which lists the expected output after each; they come from the pipeline's one
description (``drhard.pipeline.paper_stages`` with ``FullScalePlan``).  --gpus picks the
device flags: 0 = CPU only (no --fp16, CPU faiss), 1 = model and index share one GPU
(needs ~40 GB for the 26 GB passage index), 2 = model on GPU 0 and index on GPU 1,
4 = index sharded over GPUs 1-3 (the original README's layout).  STAR and the warmups
train on GPU 0 alone, as in the paper (CUDA_VISIBLE_DEVICES=0 when --gpus > 1), with the
paper's schedule: 100 epochs planned, stopped at step 50,000 (--stop_at_step 50000;
--max_steps 50000 would decay the rate to 0 there).  --rows limits the run to some rows
of the table.  Without --dry_run each command runs in the current folder (the
repository's root, where download_data.sh and data/ are) as ``python -m
drhard.commands...``; the first that fails stops the run with one ``error:`` line (exit 1).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from ..cli import run
from ..errors import DrhardError
from ..pipeline import ROWS, FullScalePlan, Stage, paper_stages, run_stage


def stages(data_type: str, gpus: int, rows: Sequence[str] = ROWS) -> List[Stage]:
    return paper_stages(FullScalePlan(data_type, gpus), rows)


def commands(data_type: str, gpus: int, rows: Sequence[str] = ROWS) -> List[str]:
    """Every command of the recipe as the README writes it, in order."""
    return [s.display() for s in stages(data_type, gpus, rows)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_type", default="passage", choices=["passage", "doc"])
    p.add_argument("--gpus", type=int, default=4, choices=[0, 1, 2, 4])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--dry_run", action="store_true", help="print the commands and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    todo = stages(a.data_type, a.gpus, a.rows)
    if a.dry_run:
        print("\n".join(s.display() for s in todo))
        return 0
    for i, stage in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {stage.display()}", flush=True)
        rc = run_stage(stage)
        if rc != 0:
            raise DrhardError(f"step {i}/{len(todo)} failed (exit {rc}): {stage.display()}")
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
