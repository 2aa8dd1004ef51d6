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
``training_state/`` (optimizer, scheduler, step, RNG) for resuming.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from . import index as dindex
from .dataset import EpochSeededSampler, pad_batch, seed_everything
from .device import resolve_device
from .io import DataError, TokenCache, atomic_dir, atomic_write, data_error, read_offset_qrels, token_prefix
from .losses import adore_batch_metrics, adore_loss, build_adore_lists, gather_candidate_embeddings
from .model import RobertaDot
from .optim import param_groups

logger = logging.getLogger(__name__)

STATE_DIR = "training_state"


@dataclass
class AdoreConfig:
    init_path: str
    pembed_path: str
    model_save_dir: str
    log_dir: str
    preprocess_dir: str
    metric_cut: Optional[int] = None
    neg_topk: int = 200
    max_seq_length: int = 64
    per_gpu_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 2000
    seed: int = 42
    save_steps: int = 5000000
    logging_steps: int = 100
    learning_rate: float = 5e-6
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: int = 6
    max_steps: int = -1
    model_gpu_index: int = 0
    faiss_gpu_index: List[int] = field(default_factory=list)
    faiss_omp_num_threads: int = 32
    no_cuda: bool = False
    allow_tokenizer_mismatch: bool = False
    resume_from_checkpoint: Optional[str] = None


class QueryDataset(Dataset):
    """Training queries with at least one relevant passage, in offset order."""

    def __init__(self, preprocess_dir: str, max_len: int, n_passages: int, mode: str = "train"):
        self.cache = TokenCache(token_prefix(preprocess_dir, f"{mode}-query"))
        path = os.path.join(preprocess_dir, f"{mode}-qrel.tsv")
        rels = read_offset_qrels(path)
        for q, ps in rels.items():
            if not 0 <= q < len(self.cache) or any(not 0 <= p < n_passages for p in ps):
                raise data_error(path, None, f"query {q} or its passages lie outside the memmaps "
                                 f"({len(self.cache)} queries, {n_passages} passage embeddings)")
        self.rels = {q: ps for q, ps in rels.items() if ps}
        self.qoffsets = sorted(self.rels)
        if not self.qoffsets:
            raise data_error(path, None, "no relevant (query, passage) pair to train on")
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.qoffsets)

    def __getitem__(self, i: int):
        q = self.qoffsets[i]
        return q, self.cache.get(q, self.max_len)


class _Collate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        ids, mask = pad_batch([it[1] for it in items], self.pad_id)  # (B, L)
        return [it[0] for it in items], ids, mask


def _step_dirs(model_save_dir: str) -> List[tuple]:
    """Complete resumable checkpoints as (global_step, path)."""
    out = []
    if not os.path.isdir(model_save_dir):
        return out
    for name in os.listdir(model_save_dir):
        if not re.fullmatch(r"(epoch|ckpt)-\d+", name):
            continue
        path = os.path.join(model_save_dir, name)
        state = os.path.join(path, STATE_DIR, "state.json")
        if os.path.exists(state):
            with open(state, encoding="utf-8") as f:
                out.append((json.load(f)["global_step"], path))
    return sorted(out)


def last_checkpoint(model_save_dir: str) -> Optional[str]:
    found = _step_dirs(model_save_dir)
    return found[-1][1] if found else None


class AdoreTrainer:
    def __init__(self, cfg: AdoreConfig):
        self.cfg = cfg
        if cfg.metric_cut is not None and cfg.metric_cut < 1:
            raise ValueError(f"--metric_cut must be >= 1 (or unset for no cut), got {cfg.metric_cut}")
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.no_cuda, cfg.model_gpu_index)
        resume = cfg.resume_from_checkpoint
        if resume in ("auto", "last"):
            resume = last_checkpoint(cfg.model_save_dir)
        self.resume = resume
        self.model = RobertaDot.from_pretrained(resume or cfg.init_path).to(self.device)
        self.tokenizer_dir = cfg.init_path
        from .retrieval import open_passage_embeddings, passage_count
        n_passages = passage_count(cfg.preprocess_dir)
        if n_passages is None:
            raise DataError(f"{cfg.preprocess_dir}: no passages memmap (run preprocess.py first)")
        self.pembed = open_passage_embeddings(cfg.pembed_path, self.model.output_embedding_size, n_passages)
        self.dataset = QueryDataset(cfg.preprocess_dir, cfg.max_seq_length, n_passages)
        self.batch_size = cfg.per_gpu_batch_size
        self.sampler = EpochSeededSampler(len(self.dataset), cfg.seed)
        self.loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                 collate_fn=_Collate(self.model.pad_token_id),
                                 generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
        self.updates_per_epoch = max(1, len(self.loader) // cfg.gradient_accumulation_steps)
        self.total_updates = self.updates_per_epoch * cfg.num_train_epochs
        if cfg.max_steps > 0:
            self.total_updates = min(self.total_updates, cfg.max_steps) if cfg.num_train_epochs > 0 else cfg.max_steps
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate,
                                           eps=cfg.adam_epsilon)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, self.total_updates)
        self.global_step = 0
        if resume:
            self._load_state(resume)
        threads = min(int(cfg.faiss_omp_num_threads), dindex.usable_cpus())
        logger.info("frozen index: %d passages x %d dims", self.pembed.shape[0], self.pembed.shape[1])
        self.index = dindex.build_index(self.pembed, gpus=cfg.faiss_gpu_index, omp_threads=threads)
        self.writer = None

    # ------------------------------------------------------------------ state
    def _save(self, name: str) -> str:
        path = os.path.join(self.cfg.model_save_dir, name)
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, tokenizer_dir=self.tokenizer_dir)
            sd = os.path.join(tmp, STATE_DIR)
            os.makedirs(sd)
            torch.save(self.optimizer.state_dict(), os.path.join(sd, "optimizer.pt"))
            torch.save(self.scheduler.state_dict(), os.path.join(sd, "scheduler.pt"))
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, os.path.join(sd, "rng.pt"))
            with open(os.path.join(sd, "state.json"), "w", encoding="utf-8") as f:
                json.dump({"global_step": self.global_step, "config": asdict(self.cfg)}, f, indent=1)
        logger.info("saved %s", path)
        return path

    def _load_state(self, path: str) -> None:
        sd = os.path.join(path, STATE_DIR)
        if not os.path.exists(os.path.join(sd, "state.json")):
            raise DataError(f"{path}: not a resumable ADORE checkpoint (no {STATE_DIR}/state.json)")
        with open(os.path.join(sd, "state.json"), encoding="utf-8") as f:
            self.global_step = int(json.load(f)["global_step"])
        self.optimizer.load_state_dict(torch.load(os.path.join(sd, "optimizer.pt"), weights_only=True,
                                                  map_location=self.device))
        self.scheduler.load_state_dict(torch.load(os.path.join(sd, "scheduler.pt"), weights_only=True))
        rng = torch.load(os.path.join(sd, "rng.pt"), weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        logger.info("resuming from %s at step %d", path, self.global_step)

    def _log(self, scalars: Dict[str, float]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.cfg.log_dir, time.strftime("%b-%d_%H-%M-%S")))
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, self.global_step)
        self.writer.flush()

    # ------------------------------------------------------------------ training
    def step_loss(self, qoffsets: Sequence[int], ids: torch.Tensor, mask: torch.Tensor):
        """Forward of one batch: (loss, mrr@10, recall@10)."""
        q_emb = self.model(ids.to(self.device), mask.to(self.device))  # (B, D)
        _, retrieved = dindex.search(self.index, q_emb.detach().float().cpu().numpy(), self.cfg.neg_topk,
                                     progress=False)  # (B, K)
        rel_lists = [self.dataset.rels[q] for q in qoffsets]
        cand_ids, labels, valid = build_adore_lists(retrieved, rel_lists)  # (B, M) each
        cand_emb = gather_candidate_embeddings(self.pembed, cand_ids, valid).to(self.device)  # (B, M, D)
        loss = adore_loss(q_emb, cand_emb, torch.from_numpy(labels), torch.from_numpy(valid), self.cfg.metric_cut)
        mrr, recall = adore_batch_metrics(retrieved, rel_lists)
        return loss, mrr, recall

    def train(self) -> List[dict]:
        cfg = self.cfg
        os.makedirs(cfg.model_save_dir, exist_ok=True)
        ga = cfg.gradient_accumulation_steps
        epochs = math.ceil(self.total_updates / self.updates_per_epoch)
        start_epoch = self.global_step // self.updates_per_epoch
        hist_path = os.path.join(cfg.model_save_dir, "train_history.json")
        history: List[dict] = []
        if self.global_step and os.path.exists(hist_path):  # a resumed run keeps the epochs before it
            with open(hist_path, encoding="utf-8") as f:
                history = [r for r in json.load(f) if r["epoch"] <= start_epoch]
        if self.global_step and self.global_step % self.updates_per_epoch == 0 and \
                not os.path.isdir(os.path.join(cfg.model_save_dir, f"epoch-{start_epoch}")):
            self._save(f"epoch-{start_epoch}")  # killed between the step's ckpt and the epoch's save
        self.model.train()
        logged = {"loss": 0.0, "mrr": 0.0, "recall": 0.0, "n": 0}
        bar = tqdm(total=self.total_updates, initial=self.global_step, desc="ADORE", unit="step")
        for epoch in range(start_epoch, epochs):
            self.sampler.set_epoch(epoch)
            skip = (self.global_step - epoch * self.updates_per_epoch) * ga
            ep = {"loss": 0.0, "mrr": 0.0, "recall": 0.0, "n": 0}
            self.optimizer.zero_grad(set_to_none=True)
            for b, (qoffsets, ids, mask) in enumerate(self.loader):
                if b < skip:
                    continue
                if b >= self.updates_per_epoch * ga or self.global_step >= self.total_updates:
                    break
                loss, mrr, recall = self.step_loss(qoffsets, ids, mask)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"ADORE loss is {loss.item()} at step {self.global_step + 1}: stopping")
                (loss / ga).backward()
                for acc in (logged, ep):
                    acc["loss"] += loss.item()
                    acc["mrr"] += mrr
                    acc["recall"] += recall
                    acc["n"] += 1
                if (b + 1) % ga:
                    continue
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                bar.update(1)
                if cfg.logging_steps > 0 and self.global_step % cfg.logging_steps == 0:
                    n = logged["n"]
                    self._log({"lr": self.scheduler.get_last_lr()[0], "train/all_loss": logged["loss"] / n,
                               "train/mrr_10": logged["mrr"] / n, "train/recall_10": logged["recall"] / n})
                    bar.set_postfix(loss=f"{logged['loss'] / n:.4f}", mrr10=f"{logged['mrr'] / n:.3f}")
                    logged = {"loss": 0.0, "mrr": 0.0, "recall": 0.0, "n": 0}
                if cfg.save_steps > 0 and self.global_step % cfg.save_steps == 0:
                    self._save(f"ckpt-{self.global_step}")
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
        bar.close()
        if self.writer is not None:
            self.writer.close()
        return history
