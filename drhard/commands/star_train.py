"""Train a dense retriever with STAR, or one of the warmup baselines.

    python ./star/train.py --do_train --max_query_length 24 --max_doc_length 120 \
        --preprocess_dir ./data/passage/preprocess \
        --hardneg_path ./data/passage/warmup_retrieve/hard.json \
        --init_path ./data/passage/warmup --output_dir ./data/passage/star_train/models \
        --logging_dir ./data/passage/star_train/log --optimizer_str lamb --learning_rate 1e-4 \
        --gradient_checkpointing --fp16

Rows of the paper's table, by flags:
  STAR         --negative_type star    --hardneg_path <warmup model's hard.json>
  BM25-Neg     --negative_type star    --hardneg_path <star/bm25_hardneg.py's hard.json>
  Inbatch-Neg  --negative_type inbatch (no --hardneg_path)
  Rand-Neg     --negative_type random  (--hard_num random passages per query)

The paper's schedule: 100 epochs planned (linear decay from --learning_rate after
--warmup_steps), stopped at step 50k: --stop_at_step 50000 (--max_steps 50000 would
decay the rate to 0 at 50k instead).  Tensorboard events: <output_dir>/log, and
--logging_dir when given.  Inputs and flags are checked before the model is built;
see drhard/star_trainer.py for the arguments and the non-finite-step, checkpoint and
GPU policies.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from transformers import HfArgumentParser, TrainerState, set_seed

from ..checkpoint import RESUME_AUTO
from ..cli import run, setup_logging
from ..dataset import TrainCollator, TrainQueryDataset
from ..errors import DataError
from ..io import PASSAGES, qrel_name, query_name
from ..lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest
from ..model import RobertaDot
from ..star_trainer import (DataTrainingArguments, DenseTrainer, EpochToDataset, ModelArguments,
                            SaveEveryEpoch, StarTrainingArguments, StopAtStep, TensorBoardScalars, resolve_resume,
                            tensorboard_dirs)

logger = logging.getLogger(__name__)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataTrainingArguments, StarTrainingArguments),
                            description=__doc__)


def _given(parser: HfArgumentParser, argv, dest: str) -> bool:
    """Whether the command line sets ``dest`` (abbreviations and ``--x=v`` included): parse once more with a
    sentinel default."""
    sentinel = object()
    default = parser.get_default(dest)
    parser.set_defaults(**{dest: sentinel})
    try:
        namespace, _ = parser.parse_known_args(argv)
    finally:
        parser.set_defaults(**{dest: default})
    return getattr(namespace, dest) is not sentinel


def parse_args(argv: Optional[Sequence[str]] = None):
    """(model, data, training) arguments; a value out of range is a usage error (exit 2) before any work."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # our range checks and the Trainer's own argument checks
        parser.error(" ".join(str(e).split()))
    train_args.logging_dir_given = _given(parser, argv, "logging_dir")
    return model_args, data_args, train_args


def _check_output_dir(args: StarTrainingArguments) -> Optional[str]:
    """Refuse a non-empty output dir (as the original) unless resuming or overwriting; return the checkpoint."""
    auto = args.resume_from_checkpoint in RESUME_AUTO
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint, args.world_size)
    if (os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite_output_dir
            and not resume and not auto):
        raise DataError(f"Output directory ({args.output_dir}) already exists and is not empty. Use "
                        "--overwrite_output_dir to train over it, or --resume_from_checkpoint auto to resume.")
    return resume


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    model_args, data_args, train_args = parse_args(argv)
    if not train_args.do_train:
        logger.warning("--do_train not given: nothing to do")
        return 0
    resume = _check_output_dir(train_args)
    set_seed(train_args.seed)
    # every input is read and checked before the model and the Trainer are built
    dataset = TrainQueryDataset(data_args.preprocess_dir, data_args.max_query_length, data_args.max_doc_length,
                                negative_type=data_args.negative_type, hardneg_path=data_args.hardneg_path,
                                hard_num=data_args.hard_num, seed=train_args.seed)
    tokenizer = check_tokenizer_lineage(data_args.preprocess_dir, model_args.init_path,
                                        data_args.allow_tokenizer_mismatch)
    head = None if model_args.head is None else model_args.head == "yes"
    done = resume is not None and 0 < train_args.stop_at_step <= TrainerState.load_from_json(
        os.path.join(resume, "trainer_state.json")).global_step
    model = RobertaDot.from_pretrained(resume if done else model_args.init_path, pooling=model_args.pooling,
                                       head=head)
    if train_args.checkpoint_encoder:
        model.gradient_checkpointing_enable()
    logger.info("%s training on %d queries (%d passages), model %s, embedding size %d",
                data_args.negative_type, len(dataset), len(dataset.docs), model_args.init_path,
                model.output_embedding_size)
    collator = TrainCollator(dataset.rel_sets, model.pad_token_id, data_args.max_query_length,
                             data_args.max_doc_length, pad_to_max=train_args.padding)
    log_dirs = tensorboard_dirs(train_args.output_dir,
                                train_args.logging_dir if train_args.logging_dir_given else None)
    trainer = DenseTrainer(
        model=model, args=train_args, train_dataset=dataset, data_collator=collator,
        callbacks=[SaveEveryEpoch(), TensorBoardScalars(log_dirs), EpochToDataset(dataset, collator),
                   StopAtStep(train_args.stop_at_step)],
        negative_type=data_args.negative_type, optimizer_str=train_args.optimizer_str,
        tokenizer_dir=model_args.init_path, max_nonfinite_steps=train_args.max_nonfinite_steps)
    if done:  # killed between the stop's checkpoint and the final save
        logger.info("%s is at or past --stop_at_step %d: saving it as the final model", resume,
                    train_args.stop_at_step)
    else:
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(train_args.output_dir)
    inputs = preprocess_inputs(data_args.preprocess_dir, [PASSAGES, query_name("train")], [qrel_name("train")])
    if data_args.hardneg_path:
        inputs["hardneg"] = data_args.hardneg_path
    write_manifest(train_args.output_dir, "star-train", inputs, {"init_path": model_args.init_path},
                   args={**vars(model_args), **vars(data_args), **train_args.to_dict()},
                   model_dir=train_args.output_dir, model=model, tokenizer=tokenizer,
                   rows={query_name("train"): len(dataset), PASSAGES: len(dataset.docs)})
    logger.info("model saved to %s", train_args.output_dir)
    return 0


def console() -> int:
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
