"""LAMB as STAR used it, and the weight-decay parameter groups of the original trainers.

The original ``star/train.py`` imported ``Lamb`` from a copy of the
cybertronai ``pytorch-lamb`` package (You et al., 2019, "Large Batch
Optimization for Deep Learning", Algorithm 2 of the paper's v3, without bias
correction).  Per parameter tensor ``p`` with gradient ``g``:

    m = b1 m + (1 - b1) g                    (no bias correction)
    v = b2 v + (1 - b2) g^2
    u = m / (sqrt(v) + eps) + wd * p         (the wd term only when wd != 0)
    phi = min(||p||, 10)                     (weight norm clamped to [0, 10])
    ratio = phi / ||u||,  1 if phi == 0 or ||u|| == 0,  1 when ``adam=True``
    p = p - lr * ratio * u

Differences from the package (behaviour is the same): the update is done with
``torch._foreach_*`` ops over all tensors of a group at once (``foreach=False``
gives the per-tensor loop), without host syncs; ``adam`` is a per-group option
saved in ``state_dict``; ``step`` is stored as a tensor.  ``weight_norm``,
``adam_norm`` and ``trust_ratio`` of the last step are kept in the state for
logging, as the package does.  Note that the original trainer built Lamb from
``lr`` and ``eps`` only, so ``--adam_beta1/--adam_beta2`` did not reach LAMB
(their defaults equal LAMB's, 0.9 and 0.999).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

WEIGHT_NORM_CLAMP = 10.0
NO_DECAY = ("bias", "LayerNorm.weight")


def param_groups(model: nn.Module, weight_decay: float,
                 no_decay: Sequence[str] = NO_DECAY) -> List[Dict]:
    """Two optimiser groups: decayed weights, and names containing a ``no_decay`` substring (wd 0).

    As the original trainers (``no_decay = ["bias", "LayerNorm.weight"]``,
    substring match): every bias and the backbone's ``*.LayerNorm.weight`` are
    not decayed, while the head's ``norm.weight`` (RobertaDot's output
    LayerNorm, whose name does not contain ``LayerNorm.weight``) *is* decayed,
    as it was in the original.  Frozen parameters are left out; empty groups
    are dropped.
    """
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if any(nd in name for nd in no_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class Lamb(Optimizer):
    """LAMB of the ``pytorch-lamb`` package (no bias correction, weight norm clamped to 10).

    Arguments follow the package: ``lr`` (1e-3), ``betas`` ((0.9, 0.999)),
    ``eps`` (1e-6; STAR passes ``--adam_epsilon`` 1e-8), ``weight_decay`` (0,
    added to the Adam direction before the trust ratio), ``adam`` (False; True
    sets the trust ratio to 1).  ``foreach`` (None = True) picks the
    multi-tensor path.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, adam: bool = False,
                 foreach: Optional[bool] = None):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adam=adam,
                        foreach=foreach)
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor) -> Dict:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # m
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # v
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One LAMB update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
            foreach = group.get("foreach")
            if foreach is None or foreach:
                buckets = defaultdict(list)
                for p in params:
                    buckets[(p.device, p.dtype)].append(p)
                for bucket in buckets.values():
                    self._step_foreach(group, bucket)
            else:
                for p in params:
                    self._step_single(group, p)
        return loss

    def _finish(self, group, states, weight_norms, adam_norms) -> torch.Tensor:
        """Trust ratios (N,) from the clamped weight norms and the Adam-step norms; state for logging."""
        ones = torch.ones_like(weight_norms)
        ratio = torch.where((weight_norms == 0) | (adam_norms == 0), ones, weight_norms / adam_norms)  # (N,)
        for i, state in enumerate(states):
            state["weight_norm"] = weight_norms[i]
            state["adam_norm"] = adam_norms[i]
            state["trust_ratio"] = ratio[i]
        return ones if group["adam"] else ratio

    def _step_single(self, group, p: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        state = self._init_state(p)
        state["step"] += 1
        m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        update = m / v.sqrt().add_(group["eps"])
        if group["weight_decay"] != 0:
            update.add_(p, alpha=group["weight_decay"])
        weight_norm = torch.linalg.vector_norm(p).clamp(0, WEIGHT_NORM_CLAMP).reshape(1)
        adam_norm = torch.linalg.vector_norm(update).reshape(1)
        ratio = self._finish(group, [state], weight_norm, adam_norm)
        p.add_(update * (ratio[0] * -group["lr"]))

    def _step_foreach(self, group, params: List[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        states = [self._init_state(p) for p in params]
        grads = [p.grad for p in params]
        ms = [s["exp_avg"] for s in states]
        vs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_([s["step"] for s in states], 1)
        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, grads, alpha=1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(ms, denom)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        weight_norms = torch.stack(torch._foreach_norm(params)).clamp(0, WEIGHT_NORM_CLAMP)  # (N,)
        adam_norms = torch.stack(torch._foreach_norm(updates))  # (N,)
        ratio = self._finish(group, states, weight_norms, adam_norms)  # (N,)
        torch._foreach_mul_(updates, list((ratio * -group["lr"]).unbind(0)))
        torch._foreach_add_(params, updates)


def build_optimizer(name: str, groups: Iterable[Dict], lr: float, eps: float,
                    betas: Tuple[float, float] = (0.9, 0.999)) -> Optimizer:
    """``lamb`` (as STAR's ``--optimizer_str lamb``) or ``adamw`` over prepared parameter groups.

    Like the original, LAMB gets ``lr`` and ``eps`` only (the package's default
    betas); AdamW gets ``betas`` too.
    """
    if name == "lamb":
        return Lamb(groups, lr=lr, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"optimizer must be 'lamb' or 'adamw', got {name!r}")
