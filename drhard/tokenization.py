"""DRhard-compatible tokenization on top of a modern byte-level BPE engine.

The released DRhard checkpoints were trained on token ids produced by
transformers 2.8.0 ``RobertaTokenizer.from_pretrained(path, do_lower_case=True)``
and ``encode(text, add_special_tokens=True, max_length=L)``.  That code path
(what the original ``preprocess.py`` ran) differs from a modern fast RoBERTa tokenizer at the edges, so
``compat="drhard"`` reimplements its rules around a fast BPE engine:

1. an empty text is an error (2.8.0 crashed on ``text[0]``);
2. a space is prepended unless ``text[0].isspace()``;
3. the text is lower-cased *character by character* (2.8.0 lowered each
   regex match of one character, so a final capital sigma becomes ``σ``, not
   the context-dependent ``ς`` of ``str.lower``); special-token strings are
   lower-case already, so ``<S>`` in a text becomes the special ``<s>``;
4. a text that is only white space (``str.strip``) gives no pieces;
5. the text is split on the special-token strings (``<s> </s> <unk> <pad>
   <mask>``), which become their ids; every piece between them is
   ``rstrip()``-ed (white space before a special token and at the end is
   dropped; white space after one is kept) and dropped when empty;
6. each piece is pre-tokenized with the GPT-2 regex and byte-level BPE'd;
7. the ids are cut to ``L - 2`` and wrapped in ``<s>`` ... ``</s>``.

The BPE engine is ``tiktoken`` (the fastest per core of the engines measured; ``bench/preprocess.py``
times the whole preprocessing) built from
``merges.txt`` with merge order as ranks and mapped to ``vocab.json`` ids, or the
HF ``tokenizers`` BPE model (``backend="tokenizers"``).  Both are checked against
each other and against ids recorded from transformers 2.8.0 in the tests.

``compat="hf"`` is for any other tokenizer directory (e.g. a WordPiece MiniLM):
the modern tokenizer with its own special tokens and truncation to ``max_length``.
"""
from __future__ import annotations

import array
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from .errors import TokenizerNotFound  # noqa: F401 - re-exported
from .io import sha256_file

import numpy as np

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>", "<mask>")
ROBERTA_FILES = ("vocab.json", "merges.txt")
# Every file of a tokenizer folder: copied into a model directory with the model, fingerprinted (in this order:
# it is part of the fingerprint), fetched from the hub ...
TOKENIZER_FILES = ("vocab.json", "merges.txt", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
# ... and those that define a vocabulary (a folder with none of them holds no tokenizer)
VOCAB_FILES = tuple(n for n in TOKENIZER_FILES if n not in ("tokenizer_config.json", "special_tokens_map.json",
                                                            "added_tokens.json"))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
DEFAULT_NAME = "roberta-base"
ENV_TOKENIZER = "DRHARD_TOKENIZER"


def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character table used in vocab.json/merges.txt."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def lower_per_char(text: str) -> str:
    """``str.lower`` applied to each character on its own (no final-sigma rule), as 2.8.0 did."""
    if "\u03a3" not in text:  # U+03A3 is the only code point whose lower() depends on context
        return text.lower()
    return "".join(c.lower() for c in text)


# --------------------------------------------------------------------------- BPE engines
class _TiktokenBPE:
    """Byte-level BPE through tiktoken: ranks = merge order, mapped back to vocab.json ids."""

    def __init__(self, vocab: dict, merges: List[tuple], unk_id: int):
        import tiktoken

        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

        def to_bytes(token: str) -> bytes:
            return bytes(byte_decoder[c] for c in token)

        ranks = {bytes([b]): b for b in range(256)}
        for a, b in merges:
            merged = to_bytes(a + b)
            if merged not in ranks:
                ranks[merged] = len(ranks)
        byte_encoder = bytes_to_unicode()
        self.rank2id = [0] * len(ranks)
        for tok, rank in ranks.items():
            self.rank2id[rank] = vocab.get("".join(byte_encoder[b] for b in tok), unk_id)
        self.enc = tiktoken.Encoding("drhard-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={})
        self.encode_codes = self.enc.encode_ordinary
        # codes are tiktoken ranks; vocabulary ids (the special tokens) get codes after them
        self.code2id = np.array(self.rank2id + sorted(set(vocab.values())), dtype=np.int32)
        self._id_code = {i: len(self.rank2id) + k for k, i in enumerate(sorted(set(vocab.values())))}

    def code_of_id(self, token_id: int) -> int:
        return self._id_code[token_id]

    def encode(self, text: str) -> List[int]:
        r2i = self.rank2id
        return [r2i[r] for r in self.enc.encode_ordinary(text)]


class _HFTokenizersBPE:
    """Byte-level BPE through the HF ``tokenizers`` Rust library (the reference engine)."""

    def __init__(self, vocab_path: Path, merges_path: Path):
        from tokenizers import Tokenizer, models, pre_tokenizers

        self.tok = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path), unk_token="<unk>"))
        self.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self.code2id = np.arange(self.tok.get_vocab_size(), dtype=np.int32)  # codes are ids

    def code_of_id(self, token_id: int) -> int:
        return token_id

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    encode_codes = encode


# --------------------------------------------------------------------------- tokenizers
class DRhardTokenizer:
    """RoBERTa-style byte-level BPE tokenizer with the transformers 2.8.0 rules (module docstring)."""

    compat = "drhard"

    def __init__(self, path: Union[str, Path], backend: str = "auto"):
        self.path = Path(path)
        with open(self.path / "vocab.json", encoding="utf-8") as f:
            self.vocab = json.load(f)
        missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"{self.path / 'vocab.json'}: special tokens {missing} missing; "
                             "not a RoBERTa-style vocabulary (use compat='hf')")
        merges = []
        with open(self.path / "merges.txt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if lineno == 1 and line.startswith("#version"):
                    continue
                if not line:
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{self.path / 'merges.txt'}:{lineno}: expected 'a b', got {line!r}")
                merges.append((parts[0], parts[1]))
        self.special_ids = {t: self.vocab[t] for t in SPECIAL_TOKENS}
        self.bos_token_id = self.special_ids["<s>"]
        self.eos_token_id = self.special_ids["</s>"]
        self.pad_token_id = self.special_ids["<pad>"]
        self.unk_token_id = self.special_ids["<unk>"]
        self.vocab_size = len(self.vocab)
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
        self._special_first = "".join(sorted({t[0] for t in SPECIAL_TOKENS}))
        if backend == "auto":
            try:
                import tiktoken  # noqa: F401
                backend = "tiktoken"
            except ImportError:
                backend = "tokenizers"
        if backend == "tiktoken":
            self.bpe = _TiktokenBPE(self.vocab, merges, self.unk_token_id)
        elif backend == "tokenizers":
            self.bpe = _HFTokenizersBPE(self.path / "vocab.json", self.path / "merges.txt")
        else:
            raise ValueError(f"unknown BPE backend {backend!r} (tiktoken, tokenizers or auto)")
        self.backend = backend

    # ---- the 2.8.0 rules
    def pieces(self, text: str) -> List[Union[str, int]]:
        """Split ``text`` as 2.8.0 did: strings still to BPE, ints for special tokens found in it."""
        if not text:
            raise ValueError("cannot tokenize an empty text (transformers 2.8.0 crashed on it)")
        if not text[0].isspace():
            text = " " + text
        text = lower_per_char(text)
        if not text.strip():
            return []
        if not any(c in text for c in self._special_first):
            piece = text.rstrip()
            return [piece] if piece else []
        out: List[Union[str, int]] = []
        for i, seg in enumerate(self._special_re.split(text)):
            if i % 2:
                out.append(self.special_ids[seg])
            else:
                seg = seg.rstrip()
                if seg:
                    out.append(seg)
        return out

    def tokenize_ids(self, text: str) -> List[int]:
        """Ids of ``text`` without ``<s>``/``</s>`` and without truncation."""
        ids: List[int] = []
        for p in self.pieces(text):
            if isinstance(p, int):
                ids.append(p)
            else:
                ids.extend(self.bpe.encode(p))
        return ids

    def encode(self, text: str, max_length: Optional[int] = None) -> List[int]:
        ids = self.tokenize_ids(text)
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length {max_length} leaves no room for <s> and </s>")
            ids = ids[: max_length - 2]
        return [self.bos_token_id] + ids + [self.eos_token_id]

    def encode_batch(self, texts: Sequence[str], max_length: Optional[int] = None) -> List[List[int]]:
        return [self.encode(t, max_length) for t in texts]

    def encode_batch_flat(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
        """``encode_batch`` as one flat int32 array of ids and int32 lengths (fast path for preprocess)."""
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for <s> and </s>")
        bpe = self.bpe
        encode_codes = bpe.encode_codes
        bos, eos = bpe.code_of_id(self.bos_token_id), bpe.code_of_id(self.eos_token_id)
        special_code = {i: bpe.code_of_id(i) for i in self.special_ids.values()}
        keep = max_length - 2
        codes = array.array("i")
        lengths = array.array("i")
        for text in texts:
            pieces = self.pieces(text)
            if len(pieces) == 1 and isinstance(pieces[0], str):
                c = encode_codes(pieces[0])
            else:
                c = []
                for p in pieces:
                    if isinstance(p, int):
                        c.append(special_code[p])
                    else:
                        c.extend(encode_codes(p))
            if len(c) > keep:
                c = c[:keep]
            codes.append(bos)
            codes.extend(c)
            codes.append(eos)
            lengths.append(len(c) + 2)
        flat = bpe.code2id[np.frombuffer(codes, dtype=np.int32)] if len(codes) else np.zeros(0, np.int32)
        return flat, np.frombuffer(lengths, dtype=np.int32).copy()

    # ---- lineage
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"compat={self.compat}\n".encode())
        for name in ROBERTA_FILES:
            h.update(f"{name}={sha256_file(str(self.path / name))}\n".encode())
        return h.hexdigest()

    def save_pretrained(self, out_dir: Union[str, Path]) -> None:
        copy_tokenizer_files(str(self.path), str(out_dir))
        out = Path(out_dir)
        if not (out / "tokenizer_config.json").exists():
            _write_roberta_tokenizer_config(out)


class HFTokenizer:
    """Any other tokenizer directory through the modern library (``compat="hf"``)."""

    compat = "hf"

    def __init__(self, path: Union[str, Path]):
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.tok = AutoTokenizer.from_pretrained(str(self.path), use_fast=True)
        if self.tok.pad_token_id is None:
            raise ValueError(f"{self.path}: tokenizer has no pad token")
        self.pad_token_id = self.tok.pad_token_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str, max_length: Optional[int] = None) -> List[int]:
        return self.encode_batch([text], max_length)[0]

    def encode_batch(self, texts: Sequence[str], max_length: Optional[int] = None) -> List[List[int]]:
        for t in texts:
            if not t:
                raise ValueError("cannot tokenize an empty text")
        enc = self.tok(list(texts), add_special_tokens=True, truncation=max_length is not None,
                       max_length=max_length)
        return enc["input_ids"]

    def encode_batch_flat(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
        ids = self.encode_batch(texts, max_length)
        lengths = np.array([len(x) for x in ids], dtype=np.int32)
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"compat={self.compat}\n".encode())
        for name in TOKENIZER_FILES:
            p = self.path / name
            if p.is_file():
                h.update(f"{name}={sha256_file(str(p))}\n".encode())
        return h.hexdigest()

    def save_pretrained(self, out_dir: Union[str, Path]) -> None:
        self.tok.save_pretrained(str(out_dir))


Tokenizer = Union[DRhardTokenizer, HFTokenizer]


# --------------------------------------------------------------------------- loading
def resolve_tokenizer_path(name_or_path: Union[str, Path]) -> Path:
    """A local tokenizer directory for ``name_or_path``.

    A directory is used as is.  The original default ``roberta-base`` resolves to
    ``$DRHARD_TOKENIZER`` when set, else to ``./data/roberta-base`` when it exists,
    else (online, ``HF_HUB_OFFLINE`` unset) to the hub's files in the HF cache.
    """
    p = Path(name_or_path)
    if p.is_dir():
        return p
    tried = [str(p)]
    if str(name_or_path) == DEFAULT_NAME:
        env = os.environ.get(ENV_TOKENIZER)
        if env:
            if Path(env).is_dir():
                return Path(env)
            tried.append(f"${ENV_TOKENIZER}={env}")
        local = Path("data") / DEFAULT_NAME
        if local.is_dir():
            return local
        tried.append(str(local))
    from .hub import TOKENIZER_PATTERNS, from_hub
    hub = from_hub(str(name_or_path), TOKENIZER_PATTERNS)
    if hub is not None:
        return hub
    tried.append("the Hugging Face hub (offline or unavailable)")
    raise TokenizerNotFound(
        f"tokenizer {str(name_or_path)!r} not found locally (tried: {', '.join(tried)}) and models are "
        "not downloaded here. Pass --model_name_or_path a local directory holding vocab.json and "
        "merges.txt (roberta-base's tokenizer files), or set "
        f"{ENV_TOKENIZER}=<that directory>, or place it at ./data/{DEFAULT_NAME}.")


def detect_compat(path: Union[str, Path]) -> str:
    """``drhard`` for RoBERTa-style byte-level BPE dirs (vocab.json+merges.txt with <s> ... <mask>), else ``hf``."""
    p = Path(path)
    if all((p / n).is_file() for n in ROBERTA_FILES):
        try:
            with open(p / "vocab.json", encoding="utf-8") as f:
                vocab = json.load(f)
        except (OSError, ValueError):
            return "hf"
        if all(t in vocab for t in SPECIAL_TOKENS):
            return "drhard"
    return "hf"


def load_tokenizer(name_or_path: Union[str, Path], compat: str = "auto", backend: str = "auto") -> Tokenizer:
    """Load a tokenizer directory; ``compat`` is ``auto``, ``drhard`` or ``hf``."""
    path = resolve_tokenizer_path(name_or_path)
    if compat == "auto":
        compat = detect_compat(path)
    if compat == "drhard":
        missing = [n for n in ROBERTA_FILES if not (path / n).is_file()]
        if missing:
            raise TokenizerNotFound(f"{path}: {', '.join(missing)} missing; compat 'drhard' needs "
                                    "a RoBERTa-style directory with vocab.json and merges.txt")
        return DRhardTokenizer(path, backend=backend)
    if compat == "hf":
        return HFTokenizer(path)
    raise ValueError(f"unknown compat {compat!r} (auto, drhard or hf)")


def has_vocab_files(folder: str) -> bool:
    """Whether ``folder`` holds a vocabulary (one of ``VOCAB_FILES``)."""
    return any(os.path.isfile(os.path.join(folder, n)) for n in VOCAB_FILES)


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Copy whatever tokenizer files ``src`` holds into ``dst`` (so a model directory carries its vocabulary)."""
    if not src or not os.path.isdir(src):
        return
    os.makedirs(dst, exist_ok=True)
    for name in TOKENIZER_FILES:
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isfile(s) and os.path.realpath(s) != os.path.realpath(d):
            shutil.copyfile(s, d)


def _write_roberta_tokenizer_config(out: Path) -> None:
    cfg = {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>",
           "mask_token": "<mask>", "add_prefix_space": False, "do_lower_case": True,
           "model_max_length": 512}
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- training
def train_bpe_tokenizer(texts: Iterable[str], out_dir: Union[str, Path], vocab_size: int = 1000) -> Path:
    """Train a RoBERTa-style byte-level BPE vocabulary on ``texts`` and write it to ``out_dir``.

    Ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then the 256 byte symbols and the
    merges, and ``<mask>`` last (as in roberta-base).  Texts are lower-cased first, since
    the DRhard rules lower-case everything they encode.
    """
    from tokenizers import Tokenizer as _Tok, models, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _Tok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - 1, 261), min_frequency=2,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((lower_per_char(t) for t in texts), trainer=trainer)
    tok.model.save(str(out))
    with open(out / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    vocab["<mask>"] = len(vocab)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(dict(sorted(vocab.items(), key=lambda kv: kv[1])), f, ensure_ascii=False)
    _write_roberta_tokenizer_config(out)
    return out
