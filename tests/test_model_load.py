"""Checkpoints written by the original ecosystem load, and embed exactly as the original model code does.

Each variant is built here by hand, as its writer left it: a ``config.json`` dict and a
``pytorch_model.bin`` state dict (zip or torch's legacy serialization):

* the original RobertaDot saved under transformers 4.x: ``"return_dict": false`` in the config
  (the original sets it before saving), ``roberta.embeddings.position_ids`` saved, no pooler;
* the original under transformers 2.8: a pooler in ``roberta.*``, legacy serialization;
* ANCE's warmup checkpoints (transformers 2.3, ``RobertaDot_NLL_LN``): no ``model_type`` key,
  ``output_hidden_states``/``finetuning_task``/``num_labels`` keys, a pooler and a
  ``classifier.*`` head in the weights.

The reference embedding is computed slowly and independently: a transformers ``RobertaModel``
built from the same hyper-parameters and given the same weights, first token, then the head's
Linear and LayerNorm written out by hand.
"""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import RobertaConfig, RobertaModel

from drhard.cli import run
from drhard.io import read_rank
from drhard.model import ModelLoadError, RobertaDot
from conftest import command
from tinyprep import make_tiny_preprocess

VOCAB, HIDDEN, LAYERS, HEADS = 130, 32, 2, 2

ENCODER = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "intermediate_size": 4 * HIDDEN, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
           "initializer_range": 0.02, "layer_norm_eps": 1e-05}

CONFIGS = {
    # RobertaConfig.to_dict() of transformers 4.5 + what the original RobertaDot set
    "drhard-4.x": {**ENCODER, "architectures": ["RobertaDot"], "model_type": "roberta", "return_dict": False,
                   "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "gradient_checkpointing": False,
                   "position_embedding_type": "absolute", "transformers_version": "4.5.1", "use_cache": True},
    # transformers 2.8
    "drhard-2.8": {**ENCODER, "architectures": ["RobertaDot"], "model_type": "roberta", "bos_token_id": 0,
                   "eos_token_id": 2, "pad_token_id": 1, "finetuning_task": None, "is_decoder": False,
                   "num_labels": 2, "output_attentions": False, "output_hidden_states": False,
                   "pruned_heads": {}, "torchscript": False, "use_bfloat16": False},
    # transformers 2.3, ANCE's RobertaDot_NLL_LN: no model_type, no token ids
    "ance-2.3": {**ENCODER, "architectures": ["RobertaDot_NLL_LN"], "finetuning_task": "msmarco",
                 "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
                 "is_decoder": False, "num_labels": 2, "output_attentions": False, "output_hidden_states": True,
                 "output_past": True, "pruned_heads": {}, "torchscript": False, "use_bfloat16": False},
}


def encoder_weights(seed: int, pooler: bool):
    """A RoBERTa encoder's weights with large random values (at init scale every text embeds alike)."""
    torch.manual_seed(seed)
    m = RobertaModel(RobertaConfig(**ENCODER, pad_token_id=1), add_pooling_layer=pooler)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=g)
    return {k: v.clone() for k, v in m.state_dict().items()}


def checkpoint_state(variant: str, seed: int = 0):
    enc = encoder_weights(seed, pooler=variant != "drhard-4.x")
    state = {"roberta." + k: v for k, v in enc.items() if not k.endswith("position_ids")}
    if variant == "drhard-4.x":  # transformers 4.x saved the position_ids buffer
        state["roberta.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
    g = torch.Generator().manual_seed(seed + 1)
    state["embeddingHead.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * 0.3
    state["embeddingHead.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    state["norm.weight"] = 1 + torch.randn(HIDDEN, generator=g) * 0.1
    state["norm.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    if variant == "ance-2.3":  # RobertaForSequenceClassification's head
        state["classifier.dense.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g)
        state["classifier.dense.bias"] = torch.zeros(HIDDEN)
        state["classifier.out_proj.weight"] = torch.randn(2, HIDDEN, generator=g)
        state["classifier.out_proj.bias"] = torch.zeros(2)
    return state


def write_checkpoint(folder: Path, variant: str, legacy: bool, state=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIGS[variant], indent=2))
    state = checkpoint_state(variant) if state is None else state
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return folder


def reference_embed(state, ids, mask):
    """The original RobertaDot's forward, slowly: RobertaModel (no pooler) -> token 0 -> Linear -> LayerNorm."""
    enc = RobertaModel(RobertaConfig(**ENCODER, pad_token_id=1), add_pooling_layer=False).eval()
    own = enc.state_dict()
    weights = {k[len("roberta."):]: v for k, v in state.items() if k.startswith("roberta.")}
    enc.load_state_dict({k: weights[k] if k in weights else own[k] for k in own}, strict=True)
    assert all(k in weights for k in own if not k.endswith("position_ids"))
    with torch.no_grad():
        first = enc(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state[:, 0]  # (B, H)
        lin = first @ state["embeddingHead.weight"].T + state["embeddingHead.bias"]  # (B, D)
        return F.layer_norm(lin, (lin.shape[-1],), state["norm.weight"], state["norm.bias"], eps=1e-5)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = [12, 7, 3, 10]
    ids = np.ones((len(lengths), 12), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = [0] + rng.integers(4, VOCAB, n - 2).tolist() + [2]
        mask[i, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


VARIANTS = [("drhard-4.x", False), ("drhard-4.x", True), ("drhard-2.8", True), ("ance-2.3", True),
            ("ance-2.3", False)]


@pytest.mark.parametrize("variant,legacy", VARIANTS)
def test_original_checkpoints_embed_as_the_original(tmp_path, caplog, monkeypatch, variant, legacy):
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    state = checkpoint_state(variant)
    folder = write_checkpoint(tmp_path / variant, variant, legacy, state)
    with caplog.at_level(logging.INFO, logger="drhard.model"):
        model = RobertaDot.from_pretrained(str(folder)).eval()
    assert loads == [True]  # weights_only, whatever the serialization
    assert model.use_head and model.pooling == "first" and model.output_embedding_size == HIDDEN
    ids, mask = batch()
    with torch.inference_mode():
        got = model.encode(ids, mask)
    torch.testing.assert_close(got, reference_embed(state, ids, mask), rtol=1e-5, atol=1e-5)
    # expected extras (pooler, classifier, position_ids) are dropped without a warning
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    if variant == "ance-2.3":
        assert any("no model_type" in r.getMessage() and "RoBERTa" in r.getMessage() for r in caplog.records)


def test_a_config_flag_never_changes_what_the_encoder_returns(tmp_path):
    """return_dict false, torchscript, output_hidden_states/attentions in config.json: the same embeddings."""
    state = checkpoint_state("drhard-2.8")
    plain = write_checkpoint(tmp_path / "plain", "drhard-2.8", False, state)
    flags = write_checkpoint(tmp_path / "flags", "drhard-2.8", False, state)
    cfg = json.loads((flags / "config.json").read_text())
    cfg.update(return_dict=False, torchscript=True, output_hidden_states=True, output_attentions=True)
    (flags / "config.json").write_text(json.dumps(cfg))
    ids, mask = batch(1)
    with torch.inference_mode():
        a = RobertaDot.from_pretrained(str(plain)).eval().encode(ids, mask)
        b = RobertaDot.from_pretrained(str(flags)).eval().encode(ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unexpected_weights_still_warn(tmp_path, caplog):
    state = checkpoint_state("drhard-2.8")
    state["roberta.encoder.layer.7.output.dense.weight"] = torch.zeros(HIDDEN, HIDDEN)  # a deeper model's layer
    state["lm_head.dense.weight"] = torch.zeros(HIDDEN, HIDDEN)  # a task head: expected, quiet
    folder = write_checkpoint(tmp_path / "extra", "drhard-2.8", False, state)
    with caplog.at_level(logging.INFO, logger="drhard.model"):
        RobertaDot.from_pretrained(str(folder))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "roberta.encoder.layer.7.output.dense.weight" in warnings[0]
    assert "lm_head" not in warnings[0]


def test_a_config_without_model_type_or_model_fields_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "m", "ance-2.3", False)
    (folder / "config.json").write_text(json.dumps({"architectures": ["RobertaDot_NLL_LN"]}))
    with pytest.raises(ModelLoadError, match="not a transformers config.*vocab_size"):
        RobertaDot.from_pretrained(str(folder))


def test_weights_that_do_not_fit_the_config_are_a_load_error(tmp_path):
    state = checkpoint_state("ance-2.3")
    state["roberta.embeddings.word_embeddings.weight"] = torch.zeros(VOCAB + 5, HIDDEN)
    folder = write_checkpoint(tmp_path / "m", "ance-2.3", False, state)
    with pytest.raises(ModelLoadError, match="do not fit"):
        RobertaDot.from_pretrained(str(folder))


# --------------------------------------------------------------------------- through the scripts
def script(name):
    return command(name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_preprocess(tmp_path_factory.mktemp("load") / "t", vocab=VOCAB)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["drhard-4.x", "ance-2.3"])
def test_inference_scripts_run_on_original_checkpoints(tiny, tmp_path, capsys, variant):
    """star/inference.py and prepare_hardneg.py died on a 4.x save with AttributeError: 'tuple' object has no
    attribute 'last_hidden_state'; ANCE's warmup was refused for its missing model_type."""
    state = checkpoint_state(variant)
    model_dir = write_checkpoint(tmp_path / "model", variant, legacy=True, state=state)
    out = tmp_path / "inf"
    rc = run(script("star/inference.py").main, ["--data_type", "passage", "--mode", "train", "--model_path",
                                                str(model_dir), "--preprocess_dir", str(tiny["preprocess"]),
                                                "--output_dir", str(out), "--max_doc_length", "20", "--topk", "5"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    n = len(read_rank(str(out / "train.rank.tsv")))
    assert n == 48
    # the stored passage embeddings are the original model's
    from drhard.io import TokenCache
    cache = TokenCache(str(tiny["preprocess"] / "passages"))
    emb = np.fromfile(out / "passages.memmap", dtype=np.float32).reshape(len(cache), HIDDEN)
    for i in range(5):
        ids = torch.tensor([cache.get(i, 20)])
        np.testing.assert_allclose(emb[i], reference_embed(state, ids, torch.ones_like(ids))[0].numpy(),
                                   rtol=1e-4, atol=1e-5)
    hn = tmp_path / "hn"
    rc = run(script("star/prepare_hardneg.py").main, ["--data_type", "passage", "--model_path", str(model_dir),
                                                      "--preprocess_dir", str(tiny["preprocess"]), "--output_dir",
                                                      str(hn), "--max_doc_length", "20", "--topk", "3"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert len(json.loads((hn / "hard.json").read_text())) == 48
    ad = tmp_path / "adore"
    rc = run(script("adore/inference.py").main, ["--model_dir", str(model_dir), "--output_dir", str(ad),
                                                 "--preprocess_dir", str(tiny["preprocess"]), "--mode", "train",
                                                 "--dmemmap_path", str(out / "passages.memmap"), "--topk", "5"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert os.path.getsize(ad / "train.qembed.memmap") == 48 * HIDDEN * 4


def test_checkpointing_uses_the_current_transformers_api_and_is_on():
    """--gradient_checkpointing turns on the backbone's activation checkpointing without the FutureWarning that
    transformers 5's deprecated alias (``gradient_checkpointing_enable``) raises."""
    import warnings
    from drhard.model import build_tiny_roberta
    model = build_tiny_roberta(vocab_size=VOCAB, hidden=HIDDEN, layers=1, heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model.gradient_checkpointing_enable()
    backbone = model.backbone
    assert (backbone.is_activation_checkpointing if hasattr(type(backbone), "is_activation_checkpointing")
            else backbone.is_gradient_checkpointing)
