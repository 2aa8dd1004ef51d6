"""STAR and the warmup baselines on the transformers ``Trainer``.

``DenseTrainer`` adds to the stock Trainer what DRhard needs: the pairwise
losses of ``drhard.losses`` selected by ``negative_type`` (STAR / BM25-Neg with
static hard negatives, Inbatch-Neg, Rand-Neg), LAMB as the paper used it or
AdamW (``drhard.optim.build_optimizer``), an epoch-seeded sampler (resume
replays the same data), and a save at every epoch end.

Policies, each in one place:

* **Non-finite steps.**  A step whose loss is NaN or infinite (any micro-batch
  of it; decided by ``step_is_finite``) is skipped: the optimizer sees no
  gradient, so neither the weights nor the optimizer state (moments, step
  counts) change -- LAMB and AdamW would move the weights even on a zero
  gradient through their momentum.  The step still counts: ``global_step`` and
  the learning-rate schedule advance, as in the original, whose apex amp
  skipped overflowing fp16 steps while the Trainer stepped the scheduler
  anyway; so the rate at step N is always the schedule's value at N (also for
  steps the fp16 gradient scaler skips on its own).  Each skip is a warning in
  the log and a ``train/nonfinite_steps`` point (the running count) in
  tensorboard; after ``max_nonfinite_steps`` non-finite steps in a row training
  stops with ``NonFiniteError`` naming the step (``drhard.finite.NonFiniteGuard``).
* **No non-finite model is saved**: the weights are checked before every save
  (checkpoints and the final model) and a NaN weight stops the run naming it.
* **Checkpoints are verified.**  Each ``checkpoint-N`` ends with
  ``checksums.json`` (``drhard.checkpoint``), written after every file the
  Trainer saved; ``resolve_resume`` picks the newest checkpoint that verifies
  for ``auto`` (saying which it skipped; none: training starts from scratch)
  and refuses an explicitly named one that does not, in one line naming the bad
  file (``drhard.checkpoint.resolve_resume``, shared with ADORE).
* **Stop at a step without changing the schedule** (``StopAtStep``): the paper
  planned 100 epochs and stopped near step 50k; ``--max_steps`` would instead
  decay the rate to 0 at the stop.
* **One GPU per process** (``gpus_for_one_process``): without torchrun, several
  visible GPUs would make the Trainer wrap the model in ``nn.DataParallel`` and
  compute the pairwise loss over the gathered batch, which is another loss.
* **TensorBoard** scalars go to ``<output_dir>/log`` (where the original wrote
  them) and to ``--logging_dir`` when it is given; no HF reporting integration.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from transformers import ProgressCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from . import losses
from .checkpoint import find_checkpoints, write_checksums
from .checkpoint import resolve_resume as resolve_checkpoint
from .cli import check_at_least
from .dataset import NEGATIVE_TYPES, EpochSeededSampler
from .finite import NonFiniteGuard, check_model_finite
from .model import RobertaDot
from .optim import build_optimizer, param_groups

logger = logging.getLogger(__name__)

# What a checkpoint must hold to resume exactly (weights, optimizer, schedule, step), RNG states aside.
CHECKPOINT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json")
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
TENSORBOARD_SUBDIR = "log"


# --------------------------------------------------------------------------- the run's arguments
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
        check_at_least("max_query_length", self.max_query_length, 2)  # <s> and </s> are always kept
        check_at_least("max_doc_length", self.max_doc_length, 2)
        check_at_least("hard_num", self.hard_num, 1)


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
            check_at_least(name, getattr(self, name), minimum)
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


# --------------------------------------------------------------------------- the trainer
def step_is_finite(loss: torch.Tensor) -> bool:
    """Whether a training step's loss is finite: the one decision (one host sync).

    A distributed version all-reduces this flag (minimum over ranks) here, so
    that every rank skips the same steps.
    """
    return bool(torch.isfinite(loss.detach()).all())


def gpus_for_one_process(visible: int, distributed: bool) -> Tuple[int, Optional[str]]:
    """The number of GPUs this process trains on, and a message when that is fewer than it sees.

    A torchrun process (``distributed``) already drives one GPU.  A plain
    ``python star/train.py`` that sees several GPUs trains on the first one:
    the Trainer would otherwise wrap the model in ``nn.DataParallel``, gather
    the embeddings of ``batch x n_gpu`` queries and compute the loss over them
    (in-batch negatives from every GPU), which is not the paper's single-GPU loss.
    """
    if distributed or visible <= 1:
        return visible, None
    return 1, (f"{visible} GPUs visible: training on the first one only (the paper's set-up; "
               "DataParallel would compute the loss over the batches of all GPUs together). "
               f"To train on all of them, one process per GPU: torchrun --nproc_per_node {visible} "
               "star/train.py ... (then in-batch negatives come from each GPU's own batch)")


class DenseTrainer(Trainer):
    def __init__(self, *args, negative_type: str = "star", optimizer_str: str = "lamb",
                 tokenizer_dir: Optional[str] = None, max_nonfinite_steps: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.negative_type = negative_type
        self.optimizer_str = optimizer_str
        self.tokenizer_dir = tokenizer_dir
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._step_finite = True  # every micro-batch of the current optimizer step had a finite loss
        self._bad_loss: Optional[float] = None
        self._skip_update = False  # the current optimizer step must not change anything
        self._nonfinite_logged = 0
        self.add_callback(_StepPolicy(self))

    def train(self, *args, **kwargs):
        """The Trainer's ``train``; when it fails, the progress bar is closed first, so the error is a line
        of its own (not appended to the bar's last state)."""
        try:
            return super().train(*args, **kwargs)
        except BaseException:
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, ProgressCallback) and cb.training_bar is not None:
                    cb.training_bar.close()
                    cb.training_bar = None
            raise

    def log(self, logs, start_time=None) -> None:
        """The Trainer's log, plus ``nonfinite_steps`` (skipped steps so far) whenever that count changed."""
        if self.nonfinite.skipped != self._nonfinite_logged:
            logs["nonfinite_steps"] = float(self.nonfinite.skipped)
            self._nonfinite_logged = self.nonfinite.skipped
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSeededSampler(len(ds), self.args.seed)

    def create_optimizer(self, model=None):
        """``build_optimizer`` over the original's weight-decay groups (LAMB gets lr and eps only)."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        self.optimizer = build_optimizer(self.optimizer_str, param_groups(model, self.args.weight_decay),
                                         lr=self.args.learning_rate, eps=self.args.adam_epsilon,
                                         betas=(self.args.adam_beta1, self.args.adam_beta2))
        self.optimizer.register_step_pre_hook(self._drop_gradients_of_skipped_step)
        return self.optimizer

    def _drop_gradients_of_skipped_step(self, optimizer, args, kwargs) -> None:
        """Runs right before the optimizer's own step (behind accelerate's wrapper and the fp16 scaler):
        on a skipped step every gradient is dropped, so the step changes no weight and no state."""
        if self._skip_update:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        q = model(inputs["query_ids"], inputs["query_mask"])  # (B, D)
        d = model(inputs["doc_ids"], inputs["doc_mask"])  # (B, D)
        if self.negative_type == "inbatch":
            loss = losses.inbatch_loss(q, d, inputs["rel_pair_mask"])
        else:
            n = model(inputs["neg_ids"], inputs["neg_mask"])  # (B * hard_num, D)
            if self.negative_type == "star":
                loss = losses.star_loss(q, d, n, inputs["rel_pair_mask"], inputs["neg_pair_mask"])
            else:
                loss = losses.randneg_loss(q, d, n, inputs["neg_pair_mask"])
        if model.training and not step_is_finite(loss):
            self._step_finite = False
            self._bad_loss = float(loss.detach())
        return (loss, {"q": q}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step; after the last micro-batch of an optimizer step, decide whether to skip it.

        The backward pass runs even on a non-finite loss: under fp16 the gradient
        scaler then sees the non-finite gradients and skips the update itself,
        and a distributed run keeps every rank in the same collectives.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            # raises NonFiniteError after max_nonfinite_steps non-finite steps in a row
            self._skip_update = self.nonfinite.update(self._step_finite, self.state.global_step + 1, self._bad_loss)
            self._step_finite, self._bad_loss = True, None
        return loss

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, RobertaDot):
            raise TypeError("DenseTrainer trains a drhard.model.RobertaDot")
        check_model_finite(model, f"step {self.state.global_step}: the model to be saved to {output_dir}")
        model.save_pretrained(output_dir, tokenizer_dir=self.tokenizer_dir)
        with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then ``checksums.json`` over every file it wrote (the mark of a complete save)."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process wrote its RNG state
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            write_checksums(folder)


class _StepPolicy(TrainerCallback):
    """What ``DenseTrainer`` does around each optimizer step (see the module docstring)."""

    def __init__(self, trainer: DenseTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        counts = [e["nonfinite_steps"] for e in state.log_history if "nonfinite_steps" in e]
        self.trainer.nonfinite.skipped = int(max(counts, default=0))  # a resumed run keeps counting
        self.trainer._nonfinite_logged = self.trainer.nonfinite.skipped

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        scheduler = t.lr_scheduler
        if scheduler is not None and hasattr(scheduler, "last_epoch"):
            # the Trainer does not step the schedule when the fp16 scaler skipped the update; we keep it at global_step
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                while scheduler.last_epoch < state.global_step:
                    scheduler.step()
        if t._skip_update:
            t._skip_update = False
            control.should_log = True  # DenseTrainer.log adds the running count of skipped steps
        return control


class SaveEveryEpoch(TrainerCallback):
    """The original saves a checkpoint at the end of each epoch."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
            control.should_save = True
        return control


class StopAtStep(TrainerCallback):
    """End training after global step ``step`` (logged and saved there); the schedule stays the full run's.

    ``--max_steps N`` makes N the schedule's horizon (the rate decays to 0 at N);
    this stops a run planned for ``--num_train_epochs`` (or a larger
    ``--max_steps``) at N with the rate that run has at N.
    """

    def __init__(self, step: int):
        self.step = int(step)

    def on_step_end(self, args, state, control, **kwargs):
        if 0 < self.step <= state.global_step:
            control.should_training_stop = True
            control.should_log = True
            if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
                control.should_save = True
        return control


def tensorboard_dirs(output_dir: str, logging_dir: Optional[str]) -> List[str]:
    """``<output_dir>/log`` (the original's place) and ``logging_dir`` when one was given, without duplicates."""
    dirs = [os.path.join(output_dir, TENSORBOARD_SUBDIR)]
    if logging_dir and os.path.abspath(logging_dir) != os.path.abspath(dirs[0]):
        dirs.append(logging_dir)
    return dirs


class TensorBoardScalars(TrainerCallback):
    """Every logged number becomes a tensorboard scalar (``train/loss``, ``train/learning_rate``...) in each of
    ``log_dirs``; the folders are created at the first log, so a run refused at the door creates none."""

    def __init__(self, log_dirs: Sequence[str]):
        self.log_dirs = [log_dirs] if isinstance(log_dirs, str) else list(log_dirs)
        self.writers = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if not self.writers:
            from torch.utils.tensorboard import SummaryWriter
            for d in self.log_dirs:
                os.makedirs(d, exist_ok=True)
                self.writers.append(SummaryWriter(d))
        for k, v in logs.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                for w in self.writers:
                    w.add_scalar(k if "/" in k else f"train/{k}", v, state.global_step)
        for w in self.writers:
            w.flush()

    def on_train_end(self, args, state, control, **kwargs):
        for w in self.writers:
            w.close()
        self.writers = []


class EpochToDataset(TrainerCallback):
    """At each epoch start: tell the dataset which epoch it is in (its random draws are seeded by epoch and
    item) and the collator which batch of the run comes next (it pads the run's first batches to full length)."""

    def __init__(self, dataset, collator=None):
        self.dataset = dataset
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(math.floor(state.epoch or 0)))
        if self.collator is not None:
            self.collator.start_at(state.global_step * args.gradient_accumulation_steps)


def checkpoint_candidates(output_dir: str) -> List[Tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder (temp folders of other names are never candidates)."""
    return find_checkpoints(output_dir, CHECKPOINT_NAME,
                            lambda path: int(CHECKPOINT_NAME.fullmatch(os.path.basename(path)).group(1)))


def required_checkpoint_files(world_size: int = 1) -> Tuple[str, ...]:
    """Files a resumable checkpoint holds: the Trainer writes one RNG state per process when there are several."""
    rng = ("rng_state.pth",) if world_size <= 1 else tuple(f"rng_state_{i}.pth" for i in range(world_size))
    return CHECKPOINT_FILES + rng


def resolve_resume(output_dir: str, resume: Optional[str], world_size: int = 1) -> Optional[str]:
    """``drhard.checkpoint.resolve_resume`` for ``checkpoint-N`` folders; ``auto`` with none that verifies starts
    from scratch (a warning)."""
    return resolve_checkpoint(output_dir, resume, checkpoint_candidates(output_dir) if resume else [],
                              required_checkpoint_files(world_size), none_verified="scratch")
