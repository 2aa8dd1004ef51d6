"""The dual encoder: ``RobertaDot`` of DRhard, over any Hugging Face encoder.

RobertaDot: RoBERTa without pooler -> first token's hidden state ->
``Linear(hidden, output_embedding_size)`` -> ``LayerNorm``.  One encoder embeds
queries and documents; relevance is the inner product.

State-dict keys are ``roberta.*`` (the backbone, under its model type's usual
prefix: ``bert.*`` for BERT/MiniLM), ``embeddingHead.{weight,bias}`` and
``norm.{weight,bias}``, so a directory written by the original
(``config.json`` + ``pytorch_model.bin``) loads unchanged, whichever transformers
wrote it: 2.8 or 4.x (whose config.json holds ``"return_dict": false``; the
encoder's output form is always asked for explicitly, never taken from the
config), ANCE's warmup checkpoints from 2.3 (no ``model_type``: read as RoBERTa,
as the original did), in torch's zip or legacy serialization (always read with
``weights_only=True``).  Their pooler and classifier weights are dropped
quietly; any other unused weight is a warning.  Checkpoints whose
backbone keys have no prefix (a plain ``RobertaModel``/``BertModel`` save, the
sentence-transformers MiniLM) load too.  We save ``config.json`` +
``model.safetensors``; extra config fields ``drhard_pooling`` (first|mean) and
``drhard_head`` (bool) record the variant.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from .errors import ModelLoadError  # noqa: F401 - re-exported
from .io import atomic_path
from .tokenization import copy_tokenizer_files

logger = logging.getLogger(__name__)

POOLINGS = ("first", "mean")
# Checkpoint weights RobertaDot has no use for, dropped without a warning: a task head (ANCE's
# RobertaForSequenceClassification ``classifier.*``, an MLM head), the backbone's pooler (transformers
# 2.x RobertaModel always had one; the original's 4.x saves do not), and buffers that are not weights.
_IGNORED_PREFIXES = ("lm_head.", "pooler.", "classifier.", "cls.", "qa_outputs.")
_IGNORED_BACKBONE_PREFIXES = ("pooler.",)
_IGNORED_BUFFERS = ("position_ids", "token_type_ids")


def _sentence_transformers_pooling(path: str) -> Optional[str]:
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.exists(cfg):
        return None
    with open(cfg, encoding="utf-8") as f:
        pool = json.load(f)
    if pool.get("pooling_mode_mean_tokens"):
        return "mean"
    if pool.get("pooling_mode_cls_token"):
        return "first"
    return None


def _one_line(e: Exception) -> str:
    """The telling line of a (possibly multi-line) torch.load error: the refused global or opcode."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Trying to load unsupported")):
            return ln
    return lines[0] if lines else type(e).__name__


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    st = os.path.join(path, "model.safetensors")
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file
        try:
            return load_file(st, device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: a bad or truncated file
            raise ModelLoadError(f"{st}: not a readable safetensors file ({e})") from None
    if os.path.exists(pt):
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise ModelLoadError(f"{pt}: cannot be read as a weights-only state dict ({_one_line(e)})") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise ModelLoadError(f"{pt}: not a state dict (expected a dict of name -> tensor, "
                                 f"got {type(state).__name__})")
        return state
    raise ModelLoadError(f"{path}: no model.safetensors or pytorch_model.bin")


# What every BERT-family config.json holds, with or without ``model_type``.
_ENCODER_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _read_config(path: str):
    """The transformers config of a model directory.

    ``config.json`` without a ``model_type`` key comes from transformers 2.x (ANCE's
    warmup checkpoints, written by 2.3, name ``RobertaDot_NLL_LN`` in ``architectures``):
    the original read every checkpoint with ``RobertaConfig``, and so do we for these
    (said in the log).  A file with no model fields at all is refused.
    """
    file = os.path.join(path, "config.json")
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: config.json is missing (not a transformers model directory)") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: config.json is not a transformers config ({e})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: config.json is not a transformers config (not a JSON object)")
    if "model_type" not in raw:
        lacking = [k for k in _ENCODER_CONFIG_KEYS if k not in raw]
        if lacking:
            raise ModelLoadError(f"{path}: config.json is not a transformers config (no model_type key, and no "
                                 f"{', '.join(lacking)} of a transformers 2.x RoBERTa config)")
        from transformers import RobertaConfig
        logger.info("%s: config.json has no model_type key (a transformers 2.x save, architectures %s): reading "
                    "it as a RoBERTa config, as the original did", path, raw.get("architectures"))
        loader = RobertaConfig
    else:
        loader = AutoConfig
    try:
        return loader.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - an unknown model_type, a malformed field
        raise ModelLoadError(f"{path}: config.json is missing or not a transformers config ({e})") from None


def _check_encoder(path: str, config) -> None:
    """RobertaDot needs a bidirectional encoder (RoBERTa, BERT, MiniLM...): refuse GPT-style decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{path}: model_type {config.model_type!r} is not a bidirectional encoder; "
                             "RobertaDot needs a RoBERTa/BERT-style encoder checkpoint")


class RobertaDot(nn.Module):
    """Dual encoder: backbone -> pooling (first token or mean) -> optional Linear+LayerNorm head."""

    def __init__(self, config, pooling: str = "first", head: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = config
        try:
            backbone = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            backbone = AutoModel.from_config(config)
        self.backbone_prefix = getattr(backbone, "base_model_prefix", "") or "encoder_model"
        self.add_module(self.backbone_prefix, backbone)
        self.pooling = pooling
        self.use_head = head
        hidden = config.hidden_size
        self.output_embedding_size = int(getattr(config, "output_embedding_size", None) or hidden) if head else hidden
        if head:
            self.embeddingHead = nn.Linear(hidden, self.output_embedding_size)
            self.norm = nn.LayerNorm(self.output_embedding_size)
            self._init_head()
        config.drhard_pooling = pooling
        config.drhard_head = head
        if head:
            config.output_embedding_size = self.output_embedding_size

    # ------------------------------------------------------------------ construction
    def _init_head(self) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        nn.init.normal_(self.embeddingHead.weight, mean=0.0, std=std)
        nn.init.zeros_(self.embeddingHead.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_prefix)

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.config, "pad_token_id", None)
        return 1 if pad is None else int(pad)

    @classmethod
    def from_config(cls, config, pooling: str = "first", head: bool = True) -> "RobertaDot":
        return cls(config, pooling=pooling, head=head)

    @classmethod
    def from_pretrained(cls, path: str, pooling: Optional[str] = None, head: Optional[bool] = None,
                        output_embedding_size: Optional[int] = None) -> "RobertaDot":
        """Load a local model directory.

        ``pooling``/``head`` default to what the directory says: our own saves
        record them; a checkpoint with ``embeddingHead.*`` weights (DRhard, ANCE)
        or any RoBERTa gets the head (randomly initialised where absent, as the
        original does from ``roberta-base``); a sentence-transformers directory
        uses its pooling; otherwise first-token pooling without head.
        """
        if not os.path.isdir(path):
            from .hub import MODEL_PATTERNS, from_hub
            hub = from_hub(path, MODEL_PATTERNS)
            if hub is None:
                raise ModelLoadError(f"{path}: model directory not found (a local directory with config.json "
                                     "and model weights is needed; offline, nothing is downloaded)")
            path = str(hub)
        config = _read_config(path)
        _check_encoder(path, config)
        state = _read_state_dict(path)
        has_head = "embeddingHead.weight" in state
        if head is None:
            head = getattr(config, "drhard_head", None)
        if head is None:
            head = has_head or config.model_type == "roberta"
        if pooling is None:
            pooling = getattr(config, "drhard_pooling", None) or _sentence_transformers_pooling(path) or "first"
        if output_embedding_size is not None:
            config.output_embedding_size = output_embedding_size
        elif has_head and head:
            config.output_embedding_size = int(state["embeddingHead.weight"].shape[0])
        model = cls(config, pooling=pooling, head=head)
        model._load_checkpoint_state(state, path)
        return model

    def _load_checkpoint_state(self, state: Dict[str, torch.Tensor], path: str) -> None:
        prefix = self.backbone_prefix + "."
        backbone_keys = set(self.backbone.state_dict().keys())
        bb, hd, unused = {}, {}, []
        for k, v in state.items():
            if k.startswith(prefix):
                bb[k[len(prefix):]] = v
            elif k.startswith("embeddingHead.") or k.startswith("norm."):
                hd[k] = v
            elif k in backbone_keys:
                bb[k] = v
            else:
                unused.append(k)
        missing = sorted(backbone_keys - set(bb))
        if missing:
            raise ModelLoadError(
                f"{path}: not a {self.config.model_type} dual-encoder checkpoint: {len(missing)} encoder "
                f"weights missing (e.g. {missing[:3]}); found keys like {sorted(state)[:3]}")
        expected = []  # weights the original's checkpoints carry and RobertaDot does not use
        for k in sorted(set(bb) - backbone_keys):
            (expected if k.startswith(_IGNORED_BACKBONE_PREFIXES) or k.endswith(_IGNORED_BUFFERS)
             else unused).append(prefix + k if prefix + k in state else k)
        try:
            self.backbone.load_state_dict({k: v.float() for k, v in bb.items() if k in backbone_keys}, strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"{path}: encoder weights do not fit its config.json "
                                 f"({' '.join(str(e).split())[:500]})") from None
        if self.use_head:
            if hd:
                try:
                    self.embeddingHead.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in hd.items()
                                                        if k.startswith("embeddingHead.")})
                    self.norm.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in hd.items()
                                               if k.startswith("norm.")})
                except RuntimeError as e:
                    raise ModelLoadError(f"{path}: embeddingHead/norm weights do not fit ({e})") from None
            else:
                logger.info("%s has no embeddingHead/norm weights: the head starts from random init", path)
        expected += [k for k in unused if k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_BUFFERS)]
        unused = [k for k in unused if not k.startswith(_IGNORED_PREFIXES) and not k.endswith(_IGNORED_BUFFERS)]
        if expected:
            logger.info("%s: %d weights of the checkpoint are not part of the dual encoder and are ignored, as "
                        "the original ignored them (e.g. %s)", path, len(expected), expected[:3])
        if unused:
            logger.warning("%s: %d checkpoint weights not used (e.g. %s)", path, len(unused), unused[:3])

    # ------------------------------------------------------------------ forward
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed a batch of token ids: (B, L) -> (B, output_embedding_size)."""
        # return_dict and the output flags are passed, not taken from the config: the original's
        # transformers 4.x saves hold "return_dict": false, ANCE's "output_hidden_states"
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                            output_hidden_states=False, output_attentions=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, L, H)
        if self.pooling == "first":
            emb = hidden[:, 0]  # (B, H)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        if self.use_head:
            emb = self.norm(self.embeddingHead(emb))  # (B, D)
        return emb

    forward = encode
    query_emb = encode
    body_emb = encode

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute encoder activations in backward (less memory, ~1/3 more compute).

        transformers 5 calls this activation checkpointing (``gradient_checkpointing_enable`` is a
        deprecated alias there); older versions only have the old name."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if hasattr(self.backbone, "activation_checkpointing_enable"):
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    activation_checkpointing_enable = gradient_checkpointing_enable

    # ------------------------------------------------------------------ saving
    def state_dict_for_save(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def save_pretrained(self, out_dir: str, tokenizer_dir: Optional[str] = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files copied from ``tokenizer_dir``)."""
        from safetensors.torch import save_file
        os.makedirs(out_dir, exist_ok=True)
        self.config.architectures = ["RobertaDot"]
        with atomic_path(os.path.join(out_dir, "config.json")) as tmp:
            self.config.to_json_file(tmp)
        with atomic_path(os.path.join(out_dir, "model.safetensors")) as tmp:
            save_file(self.state_dict_for_save(), tmp, metadata={"format": "pt"})
        if tokenizer_dir:
            copy_tokenizer_files(tokenizer_dir, out_dir)


def build_tiny_roberta(vocab_size: int = 1000, hidden: int = 32, layers: int = 2, heads: int = 2,
                       max_positions: int = 514, output_embedding_size: Optional[int] = None,
                       seed: int = 0, pooling: str = "first") -> RobertaDot:
    """A small random RobertaDot for tests and the offline quickstart.

    Trained from scratch, a tiny random encoder with first-token pooling tends to
    collapse to a constant embedding under the pairwise loss (every score equal,
    loss log 2); mean pooling learns.  Pretrained inits keep their own pooling.
    """
    from transformers import RobertaConfig
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=hidden * 4,
                           max_position_embeddings=max_positions, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if output_embedding_size:
        config.output_embedding_size = output_embedding_size
    return RobertaDot(config, pooling=pooling, head=True)
