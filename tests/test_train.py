"""STAR / warmup training and ADORE training on a tiny learnable preprocess folder."""
import json

import numpy as np
import pytest
import torch

from drhard.dataset import TrainCollator, TrainQueryDataset
from drhard.io import DataError, TokenCache
from drhard.model import RobertaDot
from tinyprep import make_tiny_preprocess, run_script


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_preprocess(tmp_path)


def train_mrr(model_dir, tiny, k=10):
    """MRR@k of the training positives under a model, by brute force over all passages."""
    model = RobertaDot.from_pretrained(str(model_dir)).eval()
    from drhard.dataset import pad_batch
    docs = TokenCache(str(tiny["preprocess"] / "passages"))
    qs = TokenCache(str(tiny["preprocess"] / "train-query"))
    with torch.no_grad():
        d = model(*pad_batch([docs[i] for i in range(len(docs))], model.pad_token_id))
        q = model(*pad_batch([qs[i] for i in range(len(qs))], model.pad_token_id))
    order = torch.argsort(q @ d.T, dim=1, descending=True).numpy()
    mrr = 0.0
    for qo, pos in tiny["positives"].items():
        hits = np.where(order[qo, :k] == pos)[0]
        mrr += 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return mrr / len(tiny["positives"])


def test_collator_masks_match_relevance(tiny):
    pre = tiny["preprocess"]
    with open(pre / "train-qrel.tsv", "a") as f:  # query 0 is also relevant to query 1's positive
        f.write(f"0\t0\t{tiny['positives'][1]}\t1\n")
    ds = TrainQueryDataset(str(pre), 12, 32, hardneg_path=str(tiny["hard"]), hard_num=2)
    items = [ds[i] for i in range(4)]
    assert [it["qoffset"] for it in items] == [0, 1, 2, 3]
    # force query 0's positive to be its first one so the masks are predictable
    items[0]["pos_poffset"] = tiny["positives"][0]
    items[1]["neg_poffsets"][0] = tiny["positives"][2]  # a "hard negative" that is query 2's positive
    batch = TrainCollator(ds.rel_sets, 1, 12, 32)(items)
    want = torch.ones(4, 4)
    want.fill_diagonal_(0)
    want[0, 1] = 0
    assert torch.equal(batch["rel_pair_mask"], want)
    neg = batch["neg_pair_mask"]
    assert neg.shape == (4, 8)
    assert neg[2, 2] == 0 and neg.sum() == 4 * 8 - 1
    # the first batch is padded to the full length, rows keep <s> ... </s>
    assert batch["query_ids"].shape == (4, 12) and batch["doc_ids"].shape == (4, 32)
    assert batch["query_ids"][0, 0] == 0 and (batch["query_mask"].sum(1) == torch.tensor(
        [len(it["query"]) for it in items])).all()


def test_collator_pads_the_runs_first_batches_by_global_batch_index(tiny, monkeypatch):
    """The first 10 batches of the run are padded to the full length: decided on the global batch index the
    trainer sets (resume restarts counting there), also with DataLoader workers interleaving batches."""
    ds = TrainQueryDataset(str(tiny["preprocess"]), 12, 32, hardneg_path=str(tiny["hard"]))
    items = [ds[i] for i in range(4)]  # queries of 7 tokens
    c = TrainCollator(ds.rel_sets, 1, 12, 32)
    assert [c(items)["query_ids"].shape[1] for _ in range(11)] == [12] * 10 + [7]
    c.start_at(9)  # a run resumed after 9 batches
    assert [c(items)["query_ids"].shape[1] for _ in range(2)] == [12, 7]
    import torch.utils.data
    from types import SimpleNamespace
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=1, num_workers=2))
    c.start_at(7)  # worker 1 of 2 collates batches 8, 10, 12 ...
    assert [c(items)["query_ids"].shape[1] for _ in range(2)] == [12, 7]


def test_items_are_reproducible_per_epoch(tiny):
    ds = TrainQueryDataset(str(tiny["preprocess"]), 12, 32, hardneg_path=str(tiny["hard"]), hard_num=3)
    a = [ds[i]["neg_poffsets"] for i in range(5)]
    assert a == [ds[i]["neg_poffsets"] for i in range(5)]
    ds.set_epoch(1)
    assert a != [ds[i]["neg_poffsets"] for i in range(5)]
    hard = json.loads(tiny["hard"].read_text())
    assert all(set(n) <= set(hard[str(i)]) for i, n in enumerate(a))


@pytest.mark.slow
def test_hardneg_must_cover_training_queries(tiny):
    hard = json.loads(tiny["hard"].read_text())
    del hard["3"]
    tiny["hard"].write_text(json.dumps(hard))
    with pytest.raises(DataError, match=r"1 of 48 training queries have no entry.*\[3\]"):
        TrainQueryDataset(str(tiny["preprocess"]), 12, 32, hardneg_path=str(tiny["hard"]))
    p = run_script("star/train.py", "--do_train", "--max_query_length", 12, "--max_doc_length", 32,
                   "--preprocess_dir", tiny["preprocess"], "--hardneg_path", tiny["hard"], "--init_path",
                   tiny["init"], "--output_dir", tiny["root"] / "out", check=False)
    assert p.returncode != 0 and "hard.json" in p.stderr and "Traceback" not in p.stderr
    assert not (tiny["root"] / "out").exists() or not any((tiny["root"] / "out").iterdir())


def _star_args(tiny, out, *extra):
    return ["--do_train", "--max_query_length", 12, "--max_doc_length", 32, "--preprocess_dir", tiny["preprocess"],
            "--init_path", tiny["init"], "--output_dir", out, "--logging_dir", tiny["root"] / "log",
            "--per_device_train_batch_size", 16, "--warmup_steps", 2, "--logging_steps", 3, "--seed", 7, *extra]


@pytest.mark.slow
def test_star_training_ranks_positives_better(tiny):
    out = tiny["root"] / "star"
    before = train_mrr(tiny["init"], tiny)
    run_script("star/train.py", *_star_args(tiny, out, "--hardneg_path", tiny["hard"], "--learning_rate", 3e-3,
                                            "--num_train_epochs", 12, "--optimizer_str", "lamb", "--fp16"))
    after = train_mrr(out, tiny)
    assert after > before + 0.1, (before, after)
    # a save at each epoch end (48 queries / batch 16 = 3 steps an epoch)
    assert {p.name for p in out.glob("checkpoint-*")} == {f"checkpoint-{3 * e}" for e in range(1, 13)}
    assert list((tiny["root"] / "log").glob("events.out.tfevents*"))
    # a non-empty output dir is refused, as in the original
    p = run_script("star/train.py", *_star_args(tiny, out, "--hardneg_path", tiny["hard"]), check=False)
    assert p.returncode != 0 and "overwrite_output_dir" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("negative_type", ["inbatch", "random"])
def test_warmup_baselines_train_without_hard_json(tiny, negative_type):
    out = tiny["root"] / negative_type
    run_script("star/train.py", *_star_args(tiny, out, "--negative_type", negative_type, "--hard_num", 4,
                                            "--max_steps", 3, "--optimizer_str", "adamw"))
    model = RobertaDot.from_pretrained(str(out))
    init = RobertaDot.from_pretrained(str(tiny["init"]))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, init.state_dict()[k])]
    assert changed


@pytest.mark.slow
def test_adore_raises_training_mrr(tiny):
    # frozen passage embeddings from the (untrained) init model
    model = RobertaDot.from_pretrained(str(tiny["init"])).eval()
    from drhard.dataset import pad_batch
    docs = TokenCache(str(tiny["preprocess"] / "passages"))
    with torch.no_grad():
        emb = model(*pad_batch([docs[i] for i in range(len(docs))], model.pad_token_id)).numpy()
    pembed = tiny["root"] / "passages.memmap"
    emb.astype(np.float32).tofile(pembed)
    out = tiny["root"] / "adore"
    p = run_script("adore/train.py", "--metric_cut", 50, "--init_path", tiny["init"], "--pembed_path", pembed,
                   "--model_save_dir", out, "--log_dir", tiny["root"] / "alog", "--preprocess_dir",
                   tiny["preprocess"], "--neg_topk", 30, "--per_gpu_batch_size", 16, "--num_train_epochs", 8,
                   "--warmup_steps", 2, "--logging_steps", 2, "--learning_rate", 2e-3)
    hist = json.loads((out / "train_history.json").read_text())
    assert [r["epoch"] for r in hist] == list(range(1, 9))
    assert hist[-1]["train_mrr_10"] > hist[0]["train_mrr_10"] + 0.05, hist
    assert "train MRR@10" in p.stdout
    assert (out / "epoch-8" / "model.safetensors").exists()
    # the saved epoch directory is a model that from_pretrained loads
    RobertaDot.from_pretrained(str(out / "epoch-8"))
    # wrong embedding size: a clear error, nothing trained
    bad = tiny["root"] / "bad.memmap"
    np.zeros((len(docs), 16), np.float32).tofile(bad)
    p = run_script("adore/train.py", "--init_path", tiny["init"], "--pembed_path", bad, "--model_save_dir",
                   tiny["root"] / "adore_bad", "--log_dir", tiny["root"] / "alog", "--preprocess_dir",
                   tiny["preprocess"], check=False)
    assert p.returncode != 0 and "embedding" in p.stderr and "Traceback" not in p.stderr
