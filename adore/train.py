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
import argparse
import logging
import math
import os
import sys

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import drhard.cli
from drhard.adore_trainer import AdoreConfig, AdoreTrainer
from drhard.io import qrel_name, query_name
from drhard.lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def _float_at_least(lo: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        if not math.isfinite(value) or value < lo:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {lo:g}, got {text}")
        return value
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def parse_args(argv=None) -> AdoreConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metric_cut", type=_int_at_least(1), default=None,
                   help="1/rank weights are 0 beyond this position; unset = no cut (the README uses 200)")
    p.add_argument("--init_path", required=True, help="model directory to start from (e.g. the STAR model)")
    p.add_argument("--pembed_path", required=True, help="passages.memmap of the frozen document encoder")
    p.add_argument("--model_save_dir", required=True)
    p.add_argument("--log_dir", required=True, help="tensorboard events go to <log_dir>/<timestamp>")
    p.add_argument("--preprocess_dir", required=True)
    p.add_argument("--neg_topk", type=_int_at_least(1), default=200, help="passages retrieved per query and step")
    p.add_argument("--max_seq_length", type=_int_at_least(2), default=64,
                   help="queries are cut to this many tokens (<s> and </s> included)")
    p.add_argument("--per_gpu_batch_size", type=_int_at_least(1), default=32)
    p.add_argument("--gradient_accumulation_steps", type=_int_at_least(1), default=1)
    p.add_argument("--warmup_steps", type=_int_at_least(0), default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save_steps", type=int, default=5000000, help="also save ckpt-<step> every this many "
                   "updates (<= 0: only the epoch-N folders)")
    p.add_argument("--logging_steps", type=int, default=100, help="tensorboard every this many updates (<= 0: never)")
    p.add_argument("--learning_rate", type=_float_at_least(0.0), default=5e-6)
    p.add_argument("--weight_decay", type=_float_at_least(0.0), default=0.01)
    p.add_argument("--adam_epsilon", type=_float_at_least(0.0), default=1e-8)
    p.add_argument("--max_grad_norm", type=_finite_float, default=1.0,
                   help="clip gradients to this norm (<= 0: no clipping)")
    p.add_argument("--num_train_epochs", type=int, default=6)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after this many updates (-1: all epochs)")
    p.add_argument("--model_gpu_index", type=_int_at_least(0), default=0,
                   help="GPU of the query encoder (CPU when none)")
    p.add_argument("--faiss_gpu_index", type=_int_at_least(0), nargs="*", default=[],
                   help="GPUs to shard the index over; none = CPU index")
    p.add_argument("--faiss_omp_num_threads", type=_int_at_least(1), default=32,
                   help="CPU search threads (capped at the cores this process may use)")
    p.add_argument("--no_cuda", action="store_true", help="encode queries on the CPU even when a GPU is visible")
    p.add_argument("--allow_tokenizer_mismatch", action="store_true",
                   help="train even when the init model's tokenizer differs from the one that made --preprocess_dir")
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="an epoch-N/ckpt-N directory, or 'auto' for the newest one in --model_save_dir that "
                   "verifies")
    p.add_argument("--max_nonfinite_steps", type=_int_at_least(1), default=10,
                   help="a step whose loss, query embeddings or gradients are NaN/inf is skipped; training stops "
                   "after this many such steps in a row")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="train even when --model_save_dir is not empty: an earlier run's checkpoints there are "
                   "removed first")
    p.add_argument("--allow_config_change", action="store_true",
                   help="resume a checkpoint even when it was trained with other data, model or hyper-parameters")
    a = p.parse_args(argv)
    if a.num_train_epochs < 1 and a.max_steps <= 0:
        p.error(f"argument --num_train_epochs: must be >= 1 when --max_steps is unset, got {a.num_train_epochs}")
    if a.overwrite_output_dir and a.resume_from_checkpoint:
        p.error("--overwrite_output_dir and --resume_from_checkpoint exclude each other")
    return AdoreConfig(**vars(a))


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
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


if __name__ == "__main__":
    sys.exit(drhard.cli.run(main))
