"""Lineage: what made an output, and whether a model and a preprocess folder belong together.

``write_manifest(folder, name, inputs, extra)`` writes ``<folder>/<name>.manifest.json``
(atomically) beside a stage's outputs::

    {"schema": "drhard-lineage/1", "name": ..., "created": "<UTC ISO time>",
     "command": sys.argv, "cwd": ..., "flags": {parsed flags},
     "versions": {"python", "torch", "transformers", "tokenizers", "faiss", "numpy", "drhard"},
     "inputs": {label: file record, ...}, "outputs": {label: file record, ...},
     "model": {"path", "files": {name: file record}, "fingerprint"} | null,
     "tokenizer": {"path", "compat", "fingerprint", "preprocess_fingerprint", "checked"} | null,
     "rows": {name: count}, **extra}

A file record is ``{"path", "size", "hashed": "full", "sha256"}`` for files under 64 MiB,
and ``{"path", "size", "hashed": "first and last 1 MiB", "sha256_first_1MiB",
"sha256_last_1MiB"}`` for larger ones (an embedding memmap of MS MARCO is tens of GB);
a missing file is ``{"path", "missing": true}``.

The tokenizer check: ``preprocess.py`` records the fingerprint of the tokenizer it used
in ``preprocess_manifest.json`` (sha256 over the vocabulary files and the compatibility
mode, ``drhard.tokenization``).  A model directory carries the tokenizer files it was
trained with (``RobertaDot.save_pretrained(..., tokenizer_dir)``).  Encoding a folder
whose token ids come from another vocabulary gives silently meaningless embeddings, so
``check_tokenizer_lineage`` refuses it unless told to go on; when either side lacks the
record (a model without tokenizer files, a folder made by the original code) it warns
that the lineage cannot be checked and goes on.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import sys
from typing import Any, Dict, Mapping, Optional

from .io import PREPROCESS_MANIFEST, DataError, atomic_write, sha256_file
from .tokenization import has_vocab_files

logger = logging.getLogger(__name__)

SCHEMA = "drhard-lineage/1"
SUFFIX = ".manifest.json"
FULL_HASH_LIMIT = 64 * 2 ** 20
EDGE_BYTES = 2 ** 20
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OVERRIDE_FLAG = "--allow_tokenizer_mismatch"


class TokenizerMismatch(DataError):
    """The model's tokenizer is not the one that made the preprocess folder's token ids."""


def manifest_path(folder: str, name: str) -> str:
    return os.path.join(folder, name + SUFFIX)


# --------------------------------------------------------------------------- records
def file_record(path: str) -> Dict[str, Any]:
    """Size and sha256 of ``path`` (whole file under 64 MiB, else its first and last 1 MiB)."""
    rec: Dict[str, Any] = {"path": os.path.abspath(path)}
    if not os.path.isfile(path):
        rec["missing"] = True
        return rec
    size = os.path.getsize(path)
    rec["size"] = size
    if size < FULL_HASH_LIMIT:
        rec["hashed"] = "full"
        rec["sha256"] = sha256_file(path)
    else:
        rec["hashed"] = "first and last 1 MiB"
        rec["sha256_first_1MiB"] = sha256_file(path, [(0, EDGE_BYTES)])
        rec["sha256_last_1MiB"] = sha256_file(path, [(size - EDGE_BYTES, EDGE_BYTES)])
    return rec


def versions() -> Dict[str, Optional[str]]:
    """Versions of Python and of the libraries a DRhard output depends on (None when not installed)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "faiss", "numpy", "drhard"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", None))
        except Exception:  # noqa: BLE001 - a missing or broken library is recorded as None
            out[name] = None
    return out


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def model_record(model_dir: str, model=None) -> Dict[str, Any]:
    """Weight files of ``model_dir`` (size + sha256 as ``file_record``) and, given the loaded
    model, ``drhard.encode.model_fingerprint`` (what embedding sidecars ``*.info.json`` hold)."""
    rec: Dict[str, Any] = {"path": os.path.abspath(model_dir),
                           "files": {n: file_record(os.path.join(model_dir, n)) for n in WEIGHT_FILES
                                     if os.path.isfile(os.path.join(model_dir, n))}}
    if model is not None:
        from .encode import model_fingerprint
        rec["fingerprint"] = model_fingerprint(model)
    return rec


# --------------------------------------------------------------------------- tokenizer lineage
def read_preprocess_manifest(preprocess_dir: str) -> Optional[dict]:
    """``preprocess_manifest.json`` of a folder, or None when absent or unreadable."""
    try:
        with open(os.path.join(preprocess_dir, PREPROCESS_MANIFEST), encoding="utf-8") as f:
            man = json.load(f)
        return man if isinstance(man, dict) else None
    except (OSError, ValueError):
        return None


def preprocess_inputs(preprocess_dir: str, names, files=()) -> Dict[str, str]:
    """Inputs of a stage that reads the token memmaps ``names`` (and ``files``) of a preprocess folder."""
    from .io import token_memmap_path, token_prefix
    inputs = {PREPROCESS_MANIFEST: os.path.join(preprocess_dir, PREPROCESS_MANIFEST)}
    inputs.update({n: token_memmap_path(token_prefix(preprocess_dir, n)) for n in names})
    inputs.update({f: os.path.join(preprocess_dir, f) for f in files})
    return inputs


def tokenizer_fingerprint(folder: str, compat: str = "auto") -> str:
    """``load_tokenizer(folder, compat).fingerprint()``; with a ``compat`` the folder cannot be
    loaded in (e.g. ``drhard`` for a ``tokenizer.json``-only folder), its own ``auto`` mode."""
    from .tokenization import TokenizerNotFound, load_tokenizer
    try:
        return load_tokenizer(folder, compat=compat).fingerprint()
    except (TokenizerNotFound, ValueError):
        if compat == "auto":
            raise
        return load_tokenizer(folder, compat="auto").fingerprint()


def check_tokenizer_lineage(preprocess_dir: str, model_dir: str, allow_mismatch: bool = False) -> Dict[str, Any]:
    """Refuse a model whose tokenizer files differ from the tokenizer that made ``preprocess_dir``.

    Returns the tokenizer record for the lineage manifest.  Raises ``TokenizerMismatch``
    (a ``DataError``: the scripts print one ``error:`` line) naming both fingerprints,
    unless ``allow_mismatch``, which logs a warning instead.  Warns and goes on when the
    folder has no ``preprocess_manifest.json`` with a fingerprint or the model directory
    carries no tokenizer files.
    """
    man = read_preprocess_manifest(preprocess_dir)
    tok = (man or {}).get("tokenizer") if isinstance((man or {}).get("tokenizer"), dict) else None
    pre_fp = tok.get("fingerprint") if tok else None
    compat = tok.get("compat", "auto") if tok else "auto"
    rec: Dict[str, Any] = {"path": os.path.abspath(model_dir), "compat": compat, "fingerprint": None,
                           "preprocess_fingerprint": pre_fp, "checked": False}
    if not pre_fp:
        logger.warning("%s has no %s with a tokenizer fingerprint (made by another tool?): cannot check that "
                       "the model's tokenizer made its token ids", preprocess_dir, PREPROCESS_MANIFEST)
        return rec
    if not has_vocab_files(model_dir):
        logger.warning("%s carries no tokenizer files: cannot check that its tokenizer made the token ids "
                       "of %s", model_dir, preprocess_dir)
        return rec
    try:
        model_fp = tokenizer_fingerprint(model_dir, compat)
    except Exception as e:  # noqa: BLE001 - unreadable files: the check cannot be made, say so
        logger.warning("cannot read the tokenizer files of %s (%s): cannot check its lineage", model_dir, e)
        return rec
    rec["fingerprint"] = model_fp
    if model_fp == pre_fp:
        rec["checked"] = True
        logger.info("tokenizer of %s matches the one that made %s (%s)", model_dir, preprocess_dir, pre_fp[:12])
        return rec
    msg = (f"tokenizer mismatch: {preprocess_dir} was tokenized with tokenizer {pre_fp[:16]} but the model "
           f"{model_dir} carries tokenizer {model_fp[:16]}; re-run preprocess.py with the model's tokenizer, "
           f"or pass {OVERRIDE_FLAG} to encode anyway")
    if not allow_mismatch:
        raise TokenizerMismatch(msg)
    logger.warning("%s (going on: %s)", msg, OVERRIDE_FLAG)
    rec["mismatch_allowed"] = True
    return rec


# --------------------------------------------------------------------------- manifests
def write_manifest(folder: str, name: str, inputs: Mapping[str, str], extra: Optional[Mapping[str, Any]] = None,
                   *, args=None, outputs: Optional[Mapping[str, str]] = None, model_dir: Optional[str] = None,
                   model=None, tokenizer: Optional[Mapping[str, Any]] = None,
                   rows: Optional[Mapping[str, int]] = None) -> str:
    """Write ``<folder>/<name>.manifest.json`` atomically (schema in the module docstring); returns its path.

    ``inputs``/``outputs`` map labels to file paths; ``args`` is the parsed argparse
    namespace (or a dict); ``tokenizer`` is what ``check_tokenizer_lineage`` returned.
    """
    flags = vars(args) if args is not None and hasattr(args, "__dict__") else (args or {})
    man: Dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "flags": _jsonable(flags),
        "versions": versions(),
        "inputs": {k: file_record(p) for k, p in inputs.items()},
        "outputs": {k: file_record(p) for k, p in (outputs or {}).items()},
        "model": model_record(model_dir, model) if model_dir else None,
        "tokenizer": _jsonable(tokenizer) if tokenizer is not None else None,
        "rows": {k: int(v) for k, v in (rows or {}).items()},
    }
    for k, v in (extra or {}).items():
        if k in man:
            raise ValueError(f"extra key {k!r} would overwrite the manifest's own field")
        man[k] = _jsonable(v)
    return save_manifest(manifest_path(folder, name), man)


def save_manifest(path: str, manifest: Mapping[str, Any]) -> str:
    """Write a manifest (these lineage records, ``preprocess_manifest.json``) as every manifest is written:
    atomically, JSON with sorted keys and a 2-space indent; returns ``path``."""
    with atomic_write(path) as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return path
