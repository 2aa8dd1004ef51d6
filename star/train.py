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
see drhard/star_trainer.py for the non-finite-step, checkpoint and GPU policies.
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
from transformers import HfArgumentParser, TrainerState, TrainingArguments, set_seed
from transformers.training_args import ParallelMode

from drhard import cli
from drhard.dataset import NEGATIVE_TYPES, TrainCollator, TrainQueryDataset
from drhard.errors import DataError
from drhard.io import PASSAGES, qrel_name, query_name
from drhard.lineage import check_tokenizer_lineage, preprocess_inputs, write_manifest
from drhard.model import RobertaDot
from drhard.star_trainer import (RESUME_AUTO, DenseTrainer, EpochToDataset, SaveEveryEpoch, StopAtStep,
                                 TensorBoardScalars, gpus_for_one_process, resolve_resume, tensorboard_dirs)

logger = logging.getLogger("star.train")


def _at_least(name: str, value, minimum) -> None:
    if value < minimum:
        raise ValueError(f"argument --{name}: must be >= {minimum}, got {value}")


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

    def __post_init__(self):
        _at_least("max_query_length", self.max_query_length, 2)  # <s> and </s> are always kept
        _at_least("max_doc_length", self.max_doc_length, 2)
        _at_least("hard_num", self.hard_num, 1)


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
    logging_dir: str = field(default="./data/passage/star_train/log", metadata={
        "help": "Also write tensorboard events here when given (they always go to <output_dir>/log, "
                "as in the original)."})
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
    stop_at_step: int = field(default=-1, metadata={
        "help": "Stop after this global step (with a log line and a save there) without changing the "
                "learning-rate schedule, which stays the one of --num_train_epochs / --max_steps "
                "(the paper: 100 epochs planned, stopped at 50000). -1: no early stop."})
    max_nonfinite_steps: int = field(default=10, metadata={
        "help": "A step with a NaN/inf loss is skipped (no update); training stops after this many such "
                "steps in a row."})

    def __post_init__(self):
        for name, minimum in (("per_device_train_batch_size", 1), ("gradient_accumulation_steps", 1),
                              ("max_nonfinite_steps", 1), ("learning_rate", 0), ("weight_decay", 0),
                              ("adam_epsilon", 0), ("adam_beta1", 0), ("adam_beta2", 0), ("max_grad_norm", 0),
                              ("warmup_steps", 0), ("dataloader_num_workers", 0)):
            _at_least(name, getattr(self, name), minimum)
        for name in ("adam_beta1", "adam_beta2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"argument --{name}: must be < 1, got {getattr(self, name)}")
        for name in ("logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"argument --{name}: must be > 0, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(f"argument --num_train_epochs: must be > 0, got {self.num_train_epochs}")
        if self.stop_at_step != -1 and self.stop_at_step < 1:
            raise ValueError(f"argument --stop_at_step: must be >= 1 (or -1: no early stop), got {self.stop_at_step}")
        gpu = torch.cuda.is_available() and not self.no_cuda
        if self.no_cuda:
            self.use_cpu = True
        if self.fp16 and not gpu:
            logger.warning("--fp16 needs a CUDA GPU and none is in use: training in fp32 on CPU")
            self.fp16 = False
        # we enable checkpointing on our encoder ourselves (the Trainer's alias is deprecated)
        self.checkpoint_encoder = bool(self.gradient_checkpointing)
        self.gradient_checkpointing = None
        requested = self.report_to
        super().__post_init__()
        if requested not in (None, "none", ["none"], []):
            logger.warning("--report_to %s ignored: star/train.py writes its own tensorboard events "
                           "(<output_dir>/log and --logging_dir)", requested)
        self.report_to = []  # no HF reporting integration writes anywhere
        n_gpu, why = gpus_for_one_process(self._n_gpu, self.parallel_mode == ParallelMode.DISTRIBUTED)
        if why:
            logger.warning(why)
            self._n_gpu = n_gpu  # as the Trainer itself does for model parallelism: no nn.DataParallel


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


def parse_args(argv=None):
    """(model, data, training) arguments; a value out of range is a usage error (exit 2) before any work."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, StarTrainingArguments))
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


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, train_args = parse_args(argv)
    if not train_args.do_train:
        logger.warning("--do_train not given: nothing to do")
        return
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


if __name__ == "__main__":
    sys.exit(cli.run(main))
