"""A toy MS MARCO (passage or doc layout, docs/formats.md "Raw dataset") and a tiny RoBERTa-style tokenizer.

    from toy_data import make_toy_msmarco, make_tiny_tokenizer
    dataset_dir = make_toy_msmarco(tmp_path / "data", "passage")   # -> data/passage/dataset
    tok_dir = make_tiny_tokenizer(tmp_path / "tok")

Passages are built from topic words, so a query (a few words of its relevant passage)
is answerable.  Everything is deterministic in ``seed``.  The files carry the edges the
DRhard rules care about: upper case, leading/trailing spaces, special-token strings,
non-ASCII text, queries without judgments (dropped for train/dev/test), several
judgments per query, qrels in another order than the queries, graded test qrels.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from drhard.rawdata import INPUT_FILES

TOY_WORDS = (
    "the of and to in is for on with as by at from that this are was be or an it which can "
    "dense retrieval model query document passage search index vector embedding negative hard "
    "random training learning rank ranking score relevance neural network language encoder "
    "airplane wing flow pressure boundary layer heat transfer shock wave mach number supersonic "
    "river ocean water rain cloud weather storm climate temperature summer winter forest tree "
    "city street house market price money bank loan tax law court judge music song guitar "
    "piano movie actor film camera photo color paint museum history war king queen empire "
    "doctor health disease blood heart brain cell gene protein medicine hospital patient"
).split()
EXTRA_TEXTS = ("Hello World", "café naïve résumé", "ΣΑΣ straße", "numbers 1234 3.14 -42",
               "what is the <mask> of dense retrieval?", "quotes \"double\" 'single'")


def _sentence(rng: random.Random, topic: Sequence[str], n: int) -> str:
    words = [rng.choice(topic) if rng.random() < 0.6 else rng.choice(TOY_WORDS) for _ in range(n)]
    return " ".join(words)


def _write(path: Path, lines: List[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")


def make_toy_msmarco(root: Path, kind: str = "passage", n_passages: int = 120, seed: int = 0,
                     n_queries: Optional[Dict[str, int]] = None) -> Path:
    """Write ``root/<kind>/dataset/`` with the MS MARCO file names and return that directory.

    ``n_queries`` per mode defaults to train 30, dev 12, test 8, lead 8 (before the extra
    unjudged train/dev/test queries, which preprocess must drop).
    """
    if kind not in ("passage", "doc"):
        raise ValueError(f"kind must be 'passage' or 'doc', not {kind!r}")
    rng = random.Random(seed)
    counts = {"train": 30, "dev": 12, "test": 8, "lead": 8, **(n_queries or {})}
    out = Path(root) / kind / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    files = INPUT_FILES[kind]

    n_topics = max(4, n_passages // 10)
    topics = [rng.sample(TOY_WORDS, 6) for _ in range(n_topics)]
    p_topic = [rng.randrange(n_topics) for _ in range(n_passages)]
    texts = []
    for i in range(n_passages):
        t = _sentence(rng, topics[p_topic[i]], rng.randint(3, 60))
        r = rng.random()
        if r < 0.05:
            t = t.upper()
        elif r < 0.08:
            t = "  " + t + "   "
        elif r < 0.10:
            t = t + " " + rng.choice(EXTRA_TEXTS)
        elif r < 0.12:
            t = "<s> " + t + " </s>"
        texts.append(t)

    if kind == "passage":
        pids = list(range(n_passages))  # MS MARCO passage ids are line numbers
        _write(out / files["collection"], [f"{pid}\t{t}" for pid, t in zip(pids, texts)])
        pid_str = [str(p) for p in pids]
    else:
        pids = sorted(rng.sample(range(1, 50 * n_passages), n_passages))
        rng.shuffle(pids)
        lines = []
        for pid, t in zip(pids, texts):
            words = t.split()
            title = " ".join(words[:4]).title() if rng.random() > 0.1 else ""
            lines.append(f"D{pid}\thttp://toy.example/{pid}/{words[0] if words else 'x'}\t{title}\t{t}")
        _write(out / files["collection"], lines)
        pid_str = [f"D{p}" for p in pids]

    by_topic: Dict[int, List[int]] = {}
    for i, tp in enumerate(p_topic):
        by_topic.setdefault(tp, []).append(i)

    next_qid = {"train": 1_000_000, "dev": 2_000, "test": 30_000, "lead": 500_000}
    for mode in ("train", "dev", "test", "lead"):
        qfile, rfile = files[mode]
        q_lines, r_lines = [], []
        qid = next_qid[mode]
        for j in range(counts[mode]):
            qid += rng.randint(1, 7)
            pos = rng.randrange(n_passages)
            words = texts[pos].split()
            q = " ".join(rng.sample(words, min(len(words), rng.randint(2, 6))))
            if j == 0:
                q = "  " + q.upper() + " "
            elif j == 1:
                q = q + " <mask>"
            q_lines.append(f"{qid}\t{q}")
            if rfile is None:
                continue
            if mode == "test":
                judged = [pos] + rng.sample(by_topic[p_topic[pos]], min(3, len(by_topic[p_topic[pos]])))
                for k, p in enumerate(dict.fromkeys(judged)):
                    grade = 3 if k == 0 else rng.randint(0, 2)
                    r_lines.append(f"{qid} 0 {pid_str[p]} {grade}")
            else:
                rel = [pos] + ([rng.choice(by_topic[p_topic[pos]])] if rng.random() < 0.3 else [])
                for p in dict.fromkeys(rel):
                    sep = "\t" if kind == "passage" else " "
                    r_lines.append(sep.join([str(qid), "0", pid_str[p], "1"]))
        if rfile is not None:
            # unjudged queries, which preprocess drops for train/dev/test
            for _ in range(3):
                qid += rng.randint(1, 7)
                q_lines.insert(rng.randrange(len(q_lines) + 1), f"{qid}\t{_sentence(rng, TOY_WORDS, 4)}")
            rng.shuffle(r_lines)  # qrels order differs from query order
            _write(out / rfile, r_lines)
        _write(out / qfile, q_lines)
    return out


def make_tiny_tokenizer(out_dir: Path, texts: Optional[Sequence[str]] = None, vocab_size: int = 600) -> Path:
    """Train a RoBERTa-style byte-level BPE tokenizer (vocab.json, merges.txt,
    tokenizer_config.json) into ``out_dir``: ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3,
    ``<mask>`` last.  Deterministic for the same texts."""
    from drhard.tokenization import train_bpe_tokenizer

    if texts is None:
        rng = random.Random(0)
        texts = [" ".join(rng.choice(TOY_WORDS) for _ in range(12)) for _ in range(400)]
        texts += list(EXTRA_TEXTS) * 5 + [" ".join(TOY_WORDS)] * 3
    return train_bpe_tokenizer(texts, Path(out_dir), vocab_size=vocab_size)
