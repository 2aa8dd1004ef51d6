"""ADORE: train the query encoder against a frozen document index (the paper's §5).

Each step encodes a batch of training queries, retrieves ``neg_topk``
passages for the whole batch in one faiss search over the frozen passage
embeddings, builds the labelled candidate lists (relevant passages appended
when none was retrieved) and optimises the rank-weighted pairwise loss of
``drhard.losses.adore_loss``.  Only the query encoder changes, so the
document index never has to be rebuilt.

Checkpoints: ``<model_save_dir>/epoch-<n>`` after each epoch and
``ckpt-<step>`` every ``save_steps``; each is a model directory that
``RobertaDot.from_pretrained`` and ``adore/inference.py`` load, plus
``training_state/`` (optimizer, scheduler, step, RNG, the run's config) for
resuming, and ``checksums.json`` written last (``drhard.checkpoint``).

Reliability rules:

* Non-finite numbers.  The passage embeddings are checked for NaN/inf chunk by
  chunk while they are added to the index (``retrieval.passage_index``, as in
  the inference scripts; faiss silently returns id -1 for a
  NaN query or passage, and the loss of an empty candidate list is a clean
  0.0).  A step whose query embeddings, loss or gradient norm is not finite is
  skipped (no change to the weights or the optimizer state; it still counts,
  so the learning-rate schedule moves on, as STAR's does; logged and counted
  in tensorboard as ``train/nonfinite_steps``); after
  ``max_nonfinite_steps`` such steps in a row training stops with
  ``NonFiniteError``.  The weights are checked before every save, so no
  checkpoint ever holds NaN.
* One run per folder.  A non-empty ``model_save_dir`` is refused unless the
  run resumes or ``overwrite_output_dir`` is set (then the old run's
  checkpoints are removed first).  A resumed checkpoint whose recorded config
  differs in a field that changes the result (``RESULT_FIELDS``) is refused
  unless ``allow_config_change`` is set.  Temp folders of killed saves are
  removed at start.
* Checkpoints are verified before a resume (``drhard.checkpoint.resolve_resume``):
  ``auto`` takes the newest one that verifies (saying which were skipped and
  why) and none verifying is a ``DataError``; an explicitly named one that does
  not verify is a ``DataError`` naming the bad file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from . import index as dindex
from .checkpoint import find_checkpoints, resolve_resume, write_checksums
from .cli import check_flags, finite_float, flag, float_at_least, int_at_least
from .dataset import EpochSeededSampler, QueryDataset, pad_batch, seed_everything
from .device import resolve_device, usable_cpus
from .errors import DataError
from .finite import NonFiniteGuard, check_model_finite
from .io import atomic_dir, atomic_write, remove_stale_tmp
from .losses import adore_batch_metrics, adore_loss, build_adore_lists, gather_candidate_embeddings
from .model import RobertaDot
from .optim import build_optimizer, param_groups

logger = logging.getLogger(__name__)

STATE_DIR = "training_state"
CHECKPOINT_NAME = re.compile(r"(epoch|ckpt)-\d+")
# Files a resumable checkpoint must hold (relative to the checkpoint folder).
REQUIRED_FILES = ("config.json", "model.safetensors", f"{STATE_DIR}/state.json", f"{STATE_DIR}/optimizer.pt",
                  f"{STATE_DIR}/scheduler.pt", f"{STATE_DIR}/rng.pt")
# Config fields that change the trained weights: a resume with other values is refused.
RESULT_FIELDS = ("init_path", "pembed_path", "preprocess_dir", "metric_cut", "neg_topk", "max_seq_length",
                 "per_gpu_batch_size", "gradient_accumulation_steps", "warmup_steps", "seed", "learning_rate",
                 "weight_decay", "adam_epsilon", "max_grad_norm", "num_train_epochs", "max_steps")
PATH_FIELDS = ("init_path", "pembed_path", "preprocess_dir")
# Files of a run besides its checkpoints (removed with them by overwrite_output_dir).
RUN_FILES = ("train_history.json", "adore-train.manifest.json")
# Test-only: "<checkpoint name>:<seconds>" pauses inside that save, after the model and before the optimizer
# state are written, so a test can SIGKILL a half-written checkpoint.
SAVE_PAUSE_ENV = "DRHARD_TEST_SAVE_PAUSE"
UNKNOWN_STEP = sys.maxsize  # a checkpoint whose state.json does not read sorts first (and is reported)


@dataclass
class AdoreConfig:
    """Every setting of an ADORE run, declared once: these fields are adore/train.py's flags (same names,
    defaults and help; ``drhard.cli.add_dataclass_flags``), and a checkpoint records them."""
    init_path: str = flag(help="model directory to start from (e.g. the STAR model)")
    pembed_path: str = flag(help="passages.memmap of the frozen document encoder")
    model_save_dir: str = flag(help="epoch-N (and ckpt-N) checkpoints go here")
    log_dir: str = flag(help="tensorboard events go to <log_dir>/<timestamp>")
    preprocess_dir: str = flag(help="output folder of preprocess.py")
    metric_cut: Optional[int] = flag(None, type=int_at_least(1),
                                     help="1/rank weights are 0 beyond this position; unset = no cut (the README "
                                     "uses 200)")
    neg_topk: int = flag(200, type=int_at_least(1), help="passages retrieved per query and step")
    # --max_seq_length is the query length here (the original's name): ``max_query_length`` below
    max_seq_length: int = flag(64, type=int_at_least(2), help="queries are cut to this many tokens (<s> and </s> "
                               "included)")
    per_gpu_batch_size: int = flag(32, type=int_at_least(1))
    gradient_accumulation_steps: int = flag(1, type=int_at_least(1))
    warmup_steps: int = flag(2000, type=int_at_least(0))
    seed: int = flag(42, type=int)
    save_steps: int = flag(5000000, type=int, help="also save ckpt-<step> every this many updates (<= 0: only the "
                           "epoch-N folders)")
    logging_steps: int = flag(100, type=int, help="tensorboard every this many updates (<= 0: never)")
    learning_rate: float = flag(5e-6, type=float_at_least(0.0))
    weight_decay: float = flag(0.01, type=float_at_least(0.0))
    adam_epsilon: float = flag(1e-8, type=float_at_least(0.0))
    max_grad_norm: float = flag(1.0, type=finite_float, help="clip gradients to this norm (<= 0: no clipping)")
    num_train_epochs: int = flag(6, type=int)
    max_steps: int = flag(-1, type=int, help="stop after this many updates (-1: all epochs)")
    model_gpu_index: int = flag(0, type=int_at_least(0), help="GPU of the query encoder (CPU when none)")
    faiss_gpu_index: List[int] = flag([], type=int_at_least(0), nargs="*",
                                      help="GPUs to shard the index over; none = CPU index")
    faiss_omp_num_threads: int = flag(32, type=int_at_least(1),
                                      help="CPU search threads (capped at the cores this process may use)")
    no_cuda: bool = flag(False, help="encode queries on the CPU even when a GPU is visible")
    allow_tokenizer_mismatch: bool = flag(False, help="train even when the init model's tokenizer differs from the "
                                          "one that made --preprocess_dir")
    resume_from_checkpoint: Optional[str] = flag(None, help="an epoch-N/ckpt-N directory, or 'auto' for the newest "
                                                 "one in --model_save_dir that verifies")
    max_nonfinite_steps: int = flag(10, type=int_at_least(1),
                                    help="a step whose loss, query embeddings or gradients are NaN/inf is skipped; "
                                    "training stops after this many such steps in a row")
    overwrite_output_dir: bool = flag(False, help="train even when --model_save_dir is not empty: an earlier run's "
                                      "checkpoints there are removed first")
    allow_config_change: bool = flag(False, help="resume a checkpoint even when it was trained with other data, "
                                     "model or hyper-parameters")

    @property
    def max_query_length(self) -> int:
        """Queries are cut to this many tokens (the flag is ``--max_seq_length``, the original's name)."""
        return self.max_seq_length


class _Collate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        ids, mask = pad_batch([it[1] for it in items], self.pad_id)  # (B, L)
        return [it[0] for it in items], ids, mask


# ---------------------------------------------------------------------- checkpoints and the output folder
def _recorded_step(path: str) -> int:
    """The global step a checkpoint recorded; from a ``ckpt-N`` name when its state does not read."""
    try:
        with open(os.path.join(path, STATE_DIR, "state.json"), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        name = os.path.basename(path)
        return int(name.split("-")[1]) if name.startswith("ckpt-") else UNKNOWN_STEP


def checkpoint_candidates(model_save_dir: str) -> List[Tuple[int, str]]:
    """Every ``epoch-N``/``ckpt-N`` folder of ``model_save_dir`` as (recorded global step, path), unverified."""
    return find_checkpoints(model_save_dir, CHECKPOINT_NAME, _recorded_step)


def _abs(path) -> str:
    return os.path.realpath(str(path))


def config_changes(recorded: Dict, cfg: AdoreConfig) -> List[str]:
    """``field: old -> new`` for every result-changing field that differs from the checkpoint's recorded config."""
    old_cfg = recorded.get("config") or {}
    old_paths = recorded.get("paths") or {}
    new = asdict(cfg)
    changes = []
    for name in RESULT_FIELDS:
        if name not in old_cfg:
            continue
        old, now = old_cfg[name], new[name]
        if name in PATH_FIELDS:
            if _abs(old_paths.get(name, old)) != _abs(now):
                changes.append(f"{name}: {old_paths.get(name, old)} -> {_abs(now)}")
        elif old != now:
            changes.append(f"{name}: {old} -> {now}")
    return changes


def _read_state(path: str) -> Dict:
    state_path = os.path.join(path, STATE_DIR, "state.json")
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        int(state["global_step"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state_path}: not an ADORE training state ({e})") from None
    return state


def prepare_output_dir(cfg: AdoreConfig) -> Optional[str]:
    """Sweep killed saves, enforce one run per folder, pick the checkpoint to resume (verified), or None.

    Cheap: runs before any model, embedding or index is loaded.
    """
    save_dir = cfg.model_save_dir
    remove_stale_tmp(save_dir)
    if cfg.overwrite_output_dir and cfg.resume_from_checkpoint:
        raise DataError("--overwrite_output_dir and --resume_from_checkpoint exclude each other")
    resume = resolve_resume(save_dir, cfg.resume_from_checkpoint, checkpoint_candidates(save_dir), REQUIRED_FILES)
    if cfg.overwrite_output_dir:
        remove_old_run(save_dir)
    elif not cfg.resume_from_checkpoint and os.path.isdir(save_dir) and os.listdir(save_dir):
        raise DataError(f"{save_dir}: --model_save_dir already exists and is not empty (another run's "
                        "checkpoints?). Use --resume_from_checkpoint auto to continue that run, "
                        "--overwrite_output_dir to remove its checkpoints and train afresh, or another folder")
    if resume:
        changes = config_changes(_read_state(resume), cfg)
        if changes and not cfg.allow_config_change:
            raise DataError(f"{resume}: this checkpoint was trained with other data, model or hyper-parameters "
                            f"({'; '.join(changes)}); resuming it would mix two runs. Use the same flags, "
                            "another --model_save_dir, or --allow_config_change to continue anyway")
        if changes:
            logger.warning("RESUMING %s WITH A CHANGED CONFIG (--allow_config_change): %s", resume,
                           "; ".join(changes))
    return resume


def remove_old_run(model_save_dir: str) -> List[str]:
    """Remove the checkpoints and run files of an earlier run (each checkpoint renamed away first, then deleted)."""
    removed = []
    if not os.path.isdir(model_save_dir):
        return removed
    for name in sorted(os.listdir(model_save_dir)):
        path = os.path.join(model_save_dir, name)
        if CHECKPOINT_NAME.fullmatch(name) and os.path.isdir(path):
            doomed = os.path.join(model_save_dir, f".{name}.old-{os.getpid()}-overwritten")
            os.replace(path, doomed)  # gone for resume at once; a kill leaves a temp name the next run sweeps
            shutil.rmtree(doomed)
            removed.append(name)
        elif name in RUN_FILES and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: removed %s of an earlier run from %s", ", ".join(removed),
                       model_save_dir)
    return removed


def _save_pause(name: str) -> None:
    spec = os.environ.get(SAVE_PAUSE_ENV)
    if spec:
        target, _, seconds = spec.rpartition(":")
        if target == name:
            time.sleep(float(seconds))


class AdoreTrainer:
    def __init__(self, cfg: AdoreConfig):
        self.cfg = cfg
        check_flags(cfg)  # the ranges adore/train.py's parser enforces, for library callers
        resume = prepare_output_dir(cfg)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.no_cuda, cfg.model_gpu_index)
        self.resume = resume
        self.model = RobertaDot.from_pretrained(resume or cfg.init_path).to(self.device)
        check_model_finite(self.model, resume or cfg.init_path)
        self.tokenizer_dir = cfg.init_path
        from .retrieval import open_passage_embeddings, passage_count, passage_index
        n_passages = passage_count(cfg.preprocess_dir)
        if n_passages is None:
            raise DataError(f"{cfg.preprocess_dir}: no passages memmap (run preprocess.py first)")
        self.pembed = open_passage_embeddings(cfg.pembed_path, self.model.output_embedding_size, n_passages)
        self.dataset = QueryDataset(cfg.preprocess_dir, cfg.max_query_length, n_passages)
        self.batch_size = cfg.per_gpu_batch_size
        self.sampler = EpochSeededSampler(len(self.dataset), cfg.seed)
        self.loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                 collate_fn=_Collate(self.model.pad_token_id),
                                 generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
        self.updates_per_epoch = max(1, len(self.loader) // cfg.gradient_accumulation_steps)
        self.total_updates = self.updates_per_epoch * cfg.num_train_epochs
        if cfg.max_steps > 0:
            self.total_updates = min(self.total_updates, cfg.max_steps) if cfg.num_train_epochs > 0 else cfg.max_steps
        # AdamW from lr and eps only (default betas), as the original
        self.optimizer = build_optimizer("adamw", param_groups(self.model, cfg.weight_decay), cfg.learning_rate,
                                         cfg.adam_epsilon)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, self.total_updates)
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps, what="ADORE training step")
        self.global_step = 0
        if resume:
            self._load_state(resume)
        threads = min(int(cfg.faiss_omp_num_threads), usable_cpus())
        logger.info("frozen index: %d passages x %d dims", self.pembed.shape[0], self.pembed.shape[1])
        self.index = passage_index(self.pembed, cfg.pembed_path, gpus=cfg.faiss_gpu_index, omp_threads=threads)
        self.writer = None

    # ------------------------------------------------------------------ state
    def _save(self, name: str) -> str:
        path = os.path.join(self.cfg.model_save_dir, name)
        check_model_finite(self.model, f"ADORE model at step {self.global_step} (not saved as {path})")
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, tokenizer_dir=self.tokenizer_dir)
            _save_pause(name)
            sd = os.path.join(tmp, STATE_DIR)
            os.makedirs(sd)
            torch.save(self.optimizer.state_dict(), os.path.join(sd, "optimizer.pt"))
            torch.save(self.scheduler.state_dict(), os.path.join(sd, "scheduler.pt"))
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, os.path.join(sd, "rng.pt"))
            with open(os.path.join(sd, "state.json"), "w", encoding="utf-8") as f:
                json.dump({"global_step": self.global_step, "config": asdict(self.cfg),
                           "paths": {k: _abs(getattr(self.cfg, k)) for k in PATH_FIELDS},
                           "nonfinite": self.guard.state_dict()}, f, indent=1)
            write_checksums(tmp)  # last: a folder without it is not a finished save
        logger.info("saved %s", path)
        return path

    def _load_state(self, path: str) -> None:
        sd = os.path.join(path, STATE_DIR)
        state = _read_state(path)
        self.global_step = int(state["global_step"])
        self.guard.load_state_dict(state.get("nonfinite") or {})
        name = ""
        try:
            name = os.path.join(sd, "optimizer.pt")
            self.optimizer.load_state_dict(torch.load(name, weights_only=True, map_location=self.device))
            name = os.path.join(sd, "scheduler.pt")
            self.scheduler.load_state_dict(torch.load(name, weights_only=True))
            name = os.path.join(sd, "rng.pt")
            rng = torch.load(name, weights_only=True)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{name}: cannot be resumed from ({first})") from None
        logger.info("resuming from %s at step %d", path, self.global_step)

    def _log(self, scalars: Dict[str, float], step: Optional[int] = None) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.cfg.log_dir, time.strftime("%b-%d_%H-%M-%S")))
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, self.global_step if step is None else step)
        self.writer.flush()

    # ------------------------------------------------------------------ training
    def step_loss(self, qoffsets: Sequence[int], ids: torch.Tensor, mask: torch.Tensor):
        """Forward of one batch: (loss, mrr@10, recall@10); loss None when a query embedding is not finite.

        faiss returns id -1 for a NaN query, so such a batch would have empty
        candidate lists and a finite-looking loss: it is reported instead.
        """
        q_emb = self.model(ids.to(self.device), mask.to(self.device))  # (B, D)
        queries = q_emb.detach().float().cpu().numpy()  # (B, D)
        if not np.isfinite(queries).all():
            return None, 0.0, 0.0
        _, retrieved = dindex.search(self.index, queries, self.cfg.neg_topk, progress=False)  # (B, K)
        rel_lists = [self.dataset.rels[q] for q in qoffsets]
        cand_ids, labels, valid = build_adore_lists(retrieved, rel_lists)  # (B, M) each
        cand_emb = gather_candidate_embeddings(self.pembed, cand_ids, valid).to(self.device)  # (B, M, D)
        loss = adore_loss(q_emb, cand_emb, torch.from_numpy(labels), torch.from_numpy(valid), self.cfg.metric_cut)
        mrr, recall = adore_batch_metrics(retrieved, rel_lists)
        return loss, mrr, recall

    def _skip_nonfinite(self, problem: Optional[str], step: int) -> bool:
        """The one decision on update ``step``: True = skip it (something was not finite).

        ``problem`` is this process's finding (None = all finite).  A
        distributed version all-reduces the finiteness flag here (MIN over
        ranks) so every rank skips the same steps.  Raises ``NonFiniteError``
        after ``max_nonfinite_steps`` skipped steps in a row.
        """
        skip = self.guard.update(problem is None, step, problem)
        if skip:
            self._log({"train/nonfinite_steps": self.guard.skipped}, step)
        return skip

    def _grad_problem(self) -> Optional[str]:
        """Clip the accumulated gradients (``max_grad_norm`` > 0); a problem string when their norm is not finite."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not bool(torch.isfinite(norm)):
            return f"gradient norm {norm.item()}"
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.max_grad_norm, norm)
        return None

    def _train_epoch(self, epoch: int, logged: Dict[str, float], bar) -> Dict[str, float]:
        """Updates of ``epoch`` from ``global_step`` on; returns the epoch's summed loss/metrics and count."""
        cfg = self.cfg
        ga = cfg.gradient_accumulation_steps
        self.sampler.set_epoch(epoch)
        skip = (self.global_step - epoch * self.updates_per_epoch) * ga
        ep = {"loss": 0.0, "mrr": 0.0, "recall": 0.0, "n": 0}
        self.optimizer.zero_grad(set_to_none=True)
        problem: Optional[str] = None  # what was not finite in this update's micro-batches
        for b, (qoffsets, ids, mask) in enumerate(self.loader):
            if b < skip:
                continue
            if b >= self.updates_per_epoch * ga or self.global_step >= self.total_updates:
                break
            loss, mrr, recall = self.step_loss(qoffsets, ids, mask)
            if loss is None:
                problem = problem or "query embeddings hold NaN or inf"
            elif not bool(torch.isfinite(loss.detach())):
                problem = problem or f"loss {loss.item()}"
            elif problem is None:
                (loss / ga).backward()
                for acc in (logged, ep):
                    acc["loss"] += loss.item()
                    acc["mrr"] += mrr
                    acc["recall"] += recall
                    acc["n"] += 1
            if (b + 1) % ga:
                continue
            if problem is None:
                problem = self._grad_problem()
            if not self._skip_nonfinite(problem, self.global_step + 1):
                self.optimizer.step()
            with warnings.catch_warnings():  # a first step that was skipped: the schedule moves on all the same
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            problem = None
            self.global_step += 1
            bar.update(1)
            if cfg.logging_steps > 0 and self.global_step % cfg.logging_steps == 0:
                n = logged["n"]
                scalars = {"lr": self.scheduler.get_last_lr()[0], "train/nonfinite_steps": self.guard.skipped}
                if n:
                    scalars.update({"train/all_loss": logged["loss"] / n, "train/mrr_10": logged["mrr"] / n,
                                    "train/recall_10": logged["recall"] / n})
                    bar.set_postfix(loss=f"{logged['loss'] / n:.4f}", mrr10=f"{logged['mrr'] / n:.3f}")
                self._log(scalars)
                logged.update(loss=0.0, mrr=0.0, recall=0.0, n=0)
            if cfg.save_steps > 0 and self.global_step % cfg.save_steps == 0:
                self._save(f"ckpt-{self.global_step}")
        return ep

    def train(self) -> List[dict]:
        cfg = self.cfg
        os.makedirs(cfg.model_save_dir, exist_ok=True)
        epochs = math.ceil(self.total_updates / self.updates_per_epoch)
        start_epoch = self.global_step // self.updates_per_epoch
        hist_path = os.path.join(cfg.model_save_dir, "train_history.json")
        history: List[dict] = []
        if self.global_step and os.path.exists(hist_path):  # a resumed run keeps the epochs before it
            try:
                with open(hist_path, encoding="utf-8") as f:
                    history = [r for r in json.load(f) if r["epoch"] <= start_epoch]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{hist_path}: not a training history ({e})") from None
        if self.global_step and self.global_step % self.updates_per_epoch == 0 and \
                not os.path.isdir(os.path.join(cfg.model_save_dir, f"epoch-{start_epoch}")):
            self._save(f"epoch-{start_epoch}")  # killed between the step's ckpt and the epoch's save
        self.model.train()
        logged = {"loss": 0.0, "mrr": 0.0, "recall": 0.0, "n": 0}
        bar = tqdm(total=self.total_updates, initial=self.global_step, desc="ADORE", unit="step")
        try:
            for epoch in range(start_epoch, epochs):
                ep = self._train_epoch(epoch, logged, bar)
                if ep["n"]:
                    row = {"epoch": epoch + 1, "step": self.global_step, "loss": ep["loss"] / ep["n"],
                           "train_mrr_10": ep["mrr"] / ep["n"], "train_recall_10": ep["recall"] / ep["n"]}
                    history.append(row)
                    with atomic_write(hist_path) as f:
                        json.dump(history, f, indent=1)
                    logger.info("epoch %d: loss %.4f, train MRR@10 %.4f, R@10 %.4f (retrieved with the encoder as "
                                "it was at each step)", row["epoch"], row["loss"], row["train_mrr_10"],
                                row["train_recall_10"])
                if self.global_step >= (epoch + 1) * self.updates_per_epoch or self.global_step >= self.total_updates:
                    self._save(f"epoch-{epoch + 1}")
                if self.global_step >= self.total_updates:
                    break
        finally:  # an error message then starts on a line of its own
            bar.close()
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        if self.guard.skipped:
            logger.warning("%d non-finite steps were skipped in all", self.guard.skipped)
        return history
