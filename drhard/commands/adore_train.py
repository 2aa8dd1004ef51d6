"""ADORE: fine-tune the query encoder against a frozen passage index.

    python ./adore/train.py --metric_cut 200 --init_path ./data/passage/trained_models/star \
        --pembed_path ./data/passage/evaluate/star/passages.memmap \
        --model_save_dir ./data/passage/adore_train/models --log_dir ./data/passage/adore_train/log \
        --preprocess_dir ./data/passage/preprocess --model_gpu_index 0 --faiss_gpu_index 1 2 3

Without a GPU the same command runs on the CPU (leave out --faiss_gpu_index, or
it falls back to a CPU index with a warning).  ADORE on top of any warmup model
(the ADORE (Inbatch-Neg) / (Rand-Neg) rows): point --init_path and
--pembed_path at that model and its passage embeddings.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..adore_trainer import AdoreConfig, AdoreTrainer
from ..cli import add_dataclass_flags, from_args, run, setup_logging
from ..io import qrel_name, query_name
from ..lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest


def build_parser() -> argparse.ArgumentParser:
    """One flag per field of ``AdoreConfig`` (its names, defaults and help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(parser, AdoreConfig)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> AdoreConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.num_train_epochs < 1 and a.max_steps <= 0:
        parser.error(f"argument --num_train_epochs: must be >= 1 when --max_steps is unset, got {a.num_train_epochs}")
    if a.overwrite_output_dir and a.resume_from_checkpoint:
        parser.error("--overwrite_output_dir and --resume_from_checkpoint exclude each other")
    return from_args(AdoreConfig, a)


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    cfg = parse_args(argv)
    tokenizer = check_tokenizer_lineage(cfg.preprocess_dir, cfg.init_path, cfg.allow_tokenizer_mismatch)
    trainer = AdoreTrainer(cfg)
    history = trainer.train()
    write_manifest(cfg.model_save_dir, "adore-train",
                   {**preprocess_inputs(cfg.preprocess_dir, [query_name("train")], [qrel_name("train")]),
                    "pembed": cfg.pembed_path},
                   {"init_path": cfg.init_path, "history": history}, args=vars(cfg),
                   model_dir=cfg.init_path, tokenizer=tokenizer, rows={query_name("train"): len(trainer.dataset)})
    if history:
        print("epoch\tstep\tloss\ttrain MRR@10\ttrain R@10")
        for r in history:
            print(f"{r['epoch']}\t{r['step']}\t{r['loss']:.4f}\t{r['train_mrr_10']:.4f}\t{r['train_recall_10']:.4f}")
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
