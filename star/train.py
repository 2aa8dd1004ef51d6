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
"""
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

try:
    import drhard  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

from drhard.dataset import NEGATIVE_TYPES, TrainCollator, TrainQueryDataset
from drhard.io import DataError
from drhard.lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest
from drhard.model import ModelLoadError, RobertaDot
from drhard.star_trainer import (DenseTrainer, EpochToDataset, NonFiniteLossError, SaveEveryEpoch,
                                 TensorBoardScalars, last_complete_checkpoint)

logger = logging.getLogger("star.train")


@dataclass
class DataTrainingArguments:
    max_query_length: int = field(metadata={"help": "Queries are cut to this many tokens (README: 24)."})
    max_doc_length: int = field(metadata={"help": "Documents are cut to this many tokens (120 passage, 512 doc)."})
    preprocess_dir: str = field(metadata={"help": "Output folder of preprocess.py."})
    hardneg_path: Optional[str] = field(default=None, metadata={
        "help": "hard.json of static hard negatives (STAR; BM25-Neg with a BM25 hard.json). "
                "Not needed for --negative_type inbatch/random."})
    negative_type: str = field(default="star", metadata={
        "help": "star (in-batch + static hard), inbatch (Inbatch-Neg), random (Rand-Neg).",
        "choices": list(NEGATIVE_TYPES)})
    hard_num: int = field(default=1, metadata={"help": "Hard (or random) negatives per query."})
    allow_tokenizer_mismatch: bool = field(default=False, metadata={
        "help": "Train even when the init model's tokenizer differs from the one that made --preprocess_dir."})


@dataclass
class ModelArguments:
    init_path: str = field(metadata={"help": "Model directory to start from (warmup model, roberta-base, MiniLM...)."})
    pooling: Optional[str] = field(default=None, metadata={
        "help": "first|mean; default: what the init directory says (first token for RobertaDot).",
        "choices": ["first", "mean"]})
    head: Optional[str] = field(default=None, metadata={
        "help": "yes|no: Linear+LayerNorm head on the pooled vector; default: the init directory's.",
        "choices": ["yes", "no"]})


@dataclass
class StarTrainingArguments(TrainingArguments):
    output_dir: str = field(default="./data/passage/star_train/models")
    logging_dir: str = field(default="./data/passage/star_train/log",
                             metadata={"help": "Tensorboard event folder."})
    padding: bool = field(default=False, metadata={"help": "Pad every batch to the max length."})
    optimizer_str: str = field(default="lamb", metadata={"help": "lamb or adamw.", "choices": ["lamb", "adamw"]})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Train even when --output_dir is not empty."})
    no_cuda: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is visible."})
    fp16_opt_level: str = field(default="O1", metadata={"help": "Accepted for compatibility; native AMP is used."})
    per_device_train_batch_size: int = field(default=256)
    learning_rate: float = field(default=1e-4)
    weight_decay: float = field(default=0.01)
    num_train_epochs: float = field(default=100.0)
    warmup_steps: int = field(default=1000)
    logging_steps: float = field(default=50)
    save_steps: float = field(default=99999999999)
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute encoder activations in backward: less memory, ~1/3 more compute."})
    remove_unused_columns: bool = field(default=False)
    dataloader_pin_memory: bool = field(default=False)

    def __post_init__(self):
        gpu = torch.cuda.is_available() and not self.no_cuda
        if self.no_cuda:
            self.use_cpu = True
        if self.fp16 and not gpu:
            logger.warning("--fp16 needs a CUDA GPU and none is in use: training in fp32 on CPU")
            self.fp16 = False
        # we enable checkpointing on our encoder ourselves (the Trainer's alias is deprecated)
        self.checkpoint_encoder = bool(self.gradient_checkpointing)
        self.gradient_checkpointing = None
        super().__post_init__()


def _check_output_dir(args: StarTrainingArguments) -> Optional[str]:
    """Refuse a non-empty output dir (as the original) unless resuming or overwriting; return the checkpoint."""
    resume = args.resume_from_checkpoint
    auto = resume in ("auto", "True", "true", "last")
    if auto:
        resume = last_complete_checkpoint(args.output_dir)
        if resume is None:
            logger.info("no complete checkpoint in %s: starting from scratch", args.output_dir)
    elif resume and not os.path.isdir(resume):
        raise SystemExit(f"--resume_from_checkpoint {resume}: no such directory")
    if (os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite_output_dir
            and not resume and not auto and args.do_train):
        raise SystemExit(f"Output directory ({args.output_dir}) already exists and is not empty. Use "
                         "--overwrite_output_dir to train over it, or --resume_from_checkpoint auto to resume.")
    return resume


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, StarTrainingArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    if not train_args.do_train:
        logger.warning("--do_train not given: nothing to do")
        return
    resume = _check_output_dir(train_args)
    set_seed(train_args.seed)
    try:
        tokenizer = check_tokenizer_lineage(data_args.preprocess_dir, model_args.init_path,
                                            data_args.allow_tokenizer_mismatch)
        head = None if model_args.head is None else model_args.head == "yes"
        model = RobertaDot.from_pretrained(model_args.init_path, pooling=model_args.pooling, head=head)
        dataset = TrainQueryDataset(data_args.preprocess_dir, data_args.max_query_length, data_args.max_doc_length,
                                    negative_type=data_args.negative_type, hardneg_path=data_args.hardneg_path,
                                    hard_num=data_args.hard_num, seed=train_args.seed)
    except (DataError, ModelLoadError) as e:
        raise SystemExit(f"error: {e}")
    if train_args.checkpoint_encoder:
        model.gradient_checkpointing_enable()
    logger.info("%s training on %d queries (%d passages), model %s, embedding size %d",
                data_args.negative_type, len(dataset), len(dataset.docs), model_args.init_path,
                model.output_embedding_size)
    collator = TrainCollator(dataset.rel_sets, model.pad_token_id, data_args.max_query_length,
                             data_args.max_doc_length, pad_to_max=train_args.padding)
    trainer = DenseTrainer(
        model=model, args=train_args, train_dataset=dataset, data_collator=collator,
        callbacks=[SaveEveryEpoch(), TensorBoardScalars(train_args.logging_dir), EpochToDataset(dataset)],
        negative_type=data_args.negative_type, optimizer_str=train_args.optimizer_str,
        tokenizer_dir=model_args.init_path)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except NonFiniteLossError as e:
        raise SystemExit(f"error: {e}")
    trainer.save_model(train_args.output_dir)
    inputs = preprocess_inputs(data_args.preprocess_dir, ["passages", "train-query"], ["train-qrel.tsv"])
    if data_args.hardneg_path:
        inputs["hardneg"] = data_args.hardneg_path
    write_manifest(train_args.output_dir, "star-train", inputs, {"init_path": model_args.init_path},
                   args={**vars(model_args), **vars(data_args), **train_args.to_dict()},
                   model_dir=train_args.output_dir, model=model, tokenizer=tokenizer,
                   rows={"train-query": len(dataset), "passages": len(dataset.docs)})
    logger.info("model saved to %s", train_args.output_dir)


if __name__ == "__main__":
    main()
