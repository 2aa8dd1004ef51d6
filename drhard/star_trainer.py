"""STAR and the warmup baselines on the transformers ``Trainer``.

``DenseTrainer`` adds to the stock Trainer what DRhard needs: the pairwise
losses of ``drhard.losses`` selected by ``negative_type`` (STAR / BM25-Neg with
static hard negatives, Inbatch-Neg, Rand-Neg), LAMB as the paper used it or
AdamW, an epoch-seeded sampler (resume replays the same data), a save at every
epoch end, tensorboard scalars under ``logging_dir``, and a stop with the step
number when the loss is not finite.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Optional

import torch
from transformers import Trainer, TrainerCallback

from . import losses
from .errors import NonFiniteError
from .dataset import EpochSeededSampler
from .model import RobertaDot

logger = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json")


class NonFiniteLossError(NonFiniteError):
    """The training loss is NaN or infinite."""


class DenseTrainer(Trainer):
    def __init__(self, *args, negative_type: str = "star", optimizer_str: str = "lamb",
                 tokenizer_dir: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.negative_type = negative_type
        self.optimizer_str = optimizer_str
        self.tokenizer_dir = tokenizer_dir

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSeededSampler(len(ds), self.args.seed)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        from .optim import Lamb, param_groups
        model = model if model is not None else self.model
        groups = param_groups(model, self.args.weight_decay)
        betas = (self.args.adam_beta1, self.args.adam_beta2)
        if self.optimizer_str == "lamb":
            self.optimizer = Lamb(groups, lr=self.args.learning_rate, betas=betas, eps=self.args.adam_epsilon)
        elif self.optimizer_str == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=betas,
                                               eps=self.args.adam_epsilon)
        else:
            raise ValueError(f"--optimizer_str must be lamb or adamw, got {self.optimizer_str!r}")
        return self.optimizer

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
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1}: stopping "
                "(lower --learning_rate, check the data, or resume from the last checkpoint)")
        return (loss, {"q": q}) if return_outputs else loss

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, RobertaDot):
            raise TypeError("DenseTrainer trains a drhard.model.RobertaDot")
        model.save_pretrained(output_dir, tokenizer_dir=self.tokenizer_dir)
        with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())


class SaveEveryEpoch(TrainerCallback):
    """The original saves a checkpoint at the end of each epoch."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
            control.should_save = True
        return control


class TensorBoardScalars(TrainerCallback):
    """Every logged number becomes a tensorboard scalar under ``log_dir`` (``train/loss``, ``train/learning_rate``...)."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.writer = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(self.log_dir, exist_ok=True)
            self.writer = SummaryWriter(self.log_dir)
        for k, v in logs.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k if "/" in k else f"train/{k}", v, state.global_step)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()


class EpochToDataset(TrainerCallback):
    """Tell the dataset which epoch it is in (its random draws are seeded by epoch and item)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(math.floor(state.epoch or 0)))


def checkpoint_complete(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, f)) for f in CHECKPOINT_FILES)


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """Newest ``checkpoint-N`` under ``output_dir`` that holds every file a resume needs."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path):
            if checkpoint_complete(path):
                found.append((int(m.group(1)), path))
            else:
                logger.warning("ignoring incomplete checkpoint %s (killed while saving?)", path)
    return max(found)[1] if found else None


def read_training_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)
