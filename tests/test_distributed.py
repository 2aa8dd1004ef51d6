"""drhard.distributed and the across-device losses: W gloo ranks on the CPU against one process.

The multi-process tests run W spawned ranks (tests/dist_workers.py, a pool
started once per world size); each rank wraps a tiny RobertaDot in
DistributedDataParallel and calls it three times per step as the Trainer does
(queries, positives, negatives).  The reference is one plain process using the
single-process losses with the collator's position masks, written as loops.
"""
import random
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import BatchSampler, SequentialSampler

import dist_workers as dw
from drhard import distributed as dd
from drhard import losses

pytestmark = pytest.mark.slow  # subprocesses, kills, resumes, downloads, the README's commands

ATOL = 1e-5
RTOL = 1e-5


@pytest.fixture(scope="module")
def pool():
    """``pool(W)``: the running pool of W ranks (a fresh one after a failure)."""
    made = {}

    def get(world: int) -> dw.WorkerPool:
        if world not in made or made[world].broken:
            made[world] = dw.WorkerPool(world)
        return made[world]

    yield get
    for p in made.values():
        p.close()


# --------------------------------------------------------------------------- references (one process)
reference_dense = dw.reference_dense
reference_adore = dw.reference_adore


def compared_after_steps(name: str) -> bool:
    """Parameters whose weights after optimizer steps are compared: all but the attention key biases.

    Softmax over the keys is unchanged when every key moves by the same bias, so
    the key bias's exact gradient is 0 and its fp32 gradient is rounding noise
    (about 1e-9); Adam and LAMB divide by sqrt(v), which turns any such noise
    into a step of about lr, so two correct runs differ there by ~lr.  Its
    gradient is still compared (to 0, within ATOL) by the gradient tests.
    """
    return not name.endswith("attention.self.key.bias")


def assert_same_weights(ranks, ref, what=""):
    compared = [n for n in ref["params"] if compared_after_steps(n)]
    assert len(compared) >= len(ref["params"]) - 2
    for name in compared:
        for k, r in enumerate(ranks):
            np.testing.assert_allclose(r["params"][name], ref["params"][name], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{what} rank {k}: weights of {name}")


def assert_same_grads(ranks, ref, what=""):
    """Every rank holds the same (DDP-averaged) gradients, equal to the reference's, for EVERY parameter."""
    names = sorted(ref["grads"])
    assert names and all(sorted(r["grads"]) == names for r in ranks)
    # gradients far above the tolerance, or an equality at ATOL would prove nothing
    assert np.median([np.abs(ref["grads"][n]).max() for n in names]) > 100 * ATOL
    for name in names:
        expected = ref["grads"][name]
        assert expected is not None, name
        for k, r in enumerate(ranks):
            np.testing.assert_allclose(r["grads"][name], expected, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{what} rank {k}: gradient of {name}")


# --------------------------------------------------------------------------- one process: pure pieces
@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), world=st.integers(1, 9))
def test_shard_range_is_contiguous_disjoint_covering_with_extra_rows_first(n, world):
    parts = [dd.shard_range(n, r, world) for r in range(world)]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    sizes = [p.stop - p.start for p in parts]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert sorted(i for p in parts for i in range(n)[p]) == list(range(n))


def test_shard_range_rejects_bad_rank():
    for bad in [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)]:
        with pytest.raises(ValueError):
            dd.shard_range(*bad)


def test_sharded_batch_sampler_shares_cover_each_global_batch():
    inner = BatchSampler(SequentialSampler(range(11)), batch_size=4, drop_last=False)
    shares = [list(dd.ShardedBatchSampler(inner, r, 3)) for r in range(3)]
    # global batches [0..3] [4..7] [8,9,10]; each rank's share of step k, joined, is global batch k
    assert [sum((s[k] for s in shares), []) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert shares[0] == [[0, 1], [4, 5], [8]] and shares[2] == [[3], [7], [10]]
    assert len(dd.ShardedBatchSampler(inner, 0, 3)) == 3
    # a last global batch with fewer items than ranks would leave a rank empty: skipped on every rank
    tiny = BatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=False)
    shares = [list(dd.ShardedBatchSampler(tiny, r, 3)) for r in range(3)]
    assert all(len(s) == 2 for s in shares) and len(dd.ShardedBatchSampler(tiny, 1, 3)) == 2

    class Seeded(SequentialSampler):
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

    inner = BatchSampler(Seeded(range(4)), batch_size=2, drop_last=False)
    dd.ShardedBatchSampler(inner, 0, 2).set_epoch(3)
    assert inner.sampler.epoch == 3


def test_read_env_single_process_and_torchrun():
    assert dd.read_env({}) == dd.DistEnv()
    assert not dd.read_env({"WORLD_SIZE": "1"}).distributed
    env = dd.read_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.master_addr, env.master_port) == \
        (3, 4, 1, 2, "node0", 29500) and env.distributed
    ok = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert dd.read_env(ok).local_rank == 1  # one machine: LOCAL_RANK defaults to RANK
    for bad in [{"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                {**ok, "RANK": "2"}, {**ok, "WORLD_SIZE": "x"}, {**ok, "MASTER_PORT": ""},
                {**ok, "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}]:
        with pytest.raises(dd.DistributedError):
            dd.read_env(bad)


def test_single_process_is_the_identity(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert dd.init_distributed("cpu") == torch.device("cpu")
    assert dd.init_distributed("auto") == torch.device("cpu")  # conftest hides GPUs
    assert (dd.rank(), dd.world_size(), dd.local_rank(), dd.is_distributed()) == (0, 1, 0, False)
    assert dd.is_main_process() and dd.is_local_main_process()
    dd.barrier()
    t = torch.randn(3, 2, requires_grad=True)
    g = dd.all_gather_with_grad(t)
    (g * 2).sum().backward()
    assert torch.equal(g, t) and torch.equal(t.grad, torch.full((3, 2), 2.0))
    assert torch.equal(dd.all_gather_no_grad(t), t) and not dd.all_gather_no_grad(t).requires_grad
    assert torch.equal(dd.all_reduce_sum(t), t) and dd.all_reduce_sum(3) == 3 and dd.all_reduce_sum(0.5) == 0.5
    assert dd.all_reduce_any(True) and not dd.all_reduce_any(False)
    assert dd.broadcast_object({"a": 1}) == {"a": 1} and dd.all_gather_objects(7) == [7]
    assert dd.gather_sizes(5) == [5]
    with pytest.raises(dd.DistributedError):
        dd.select_device("cuda")
    with pytest.raises(ValueError):
        dd.select_device("tpu")


def test_offset_masks_equal_the_collators_position_masks():
    rng = random.Random(0)
    for _ in range(50):
        B = rng.randint(1, 6)
        rels = [rng.sample(range(10), rng.randint(1, 4)) for _ in range(B)]
        docs = [rng.randrange(10) for _ in range(rng.randint(0, 12))]
        expected = torch.tensor([[0.0 if p in r else 1.0 for p in docs] for r in rels]).reshape(B, len(docs))
        got = losses.offset_pair_mask(losses.relevant_offsets(rels), torch.tensor(docs, dtype=torch.long))
        assert torch.equal(got, expected)
    off = losses.relevant_offsets([[5, 3, 5], [7]])
    assert off.tolist() == [[3, 5], [7, -1]] and off.dtype == torch.long
    assert losses.relevant_offsets([[1]], width=3).tolist() == [[1, -1, -1]]
    with pytest.raises(ValueError):
        losses.relevant_offsets([[-1]])


@pytest.mark.parametrize("negative_type", ["star", "inbatch", "random"])
def test_global_scope_in_one_process_equals_device_scope(negative_type):
    """W = 1: offsets-based global losses == the position-mask losses, values and gradients."""
    model = dw.make_model()
    t = dw.batch_tensors(dw.make_batch(6, 3), slice(0, 6))

    def run(scope):
        model.zero_grad(set_to_none=True)
        q = model(t["query_ids"], t["query_mask"])
        d = model(t["doc_ids"], t["doc_mask"])
        n = model(t["neg_ids"], t["neg_mask"])
        loss = losses.training_loss(negative_type, q, d, None if negative_type == "inbatch" else n, t, scope=scope)
        loss.backward()
        return loss.item(), dw.grads_of(model)

    (l_dev, g_dev), (l_glob, g_glob) = run("device"), run("global")
    assert l_glob == pytest.approx(l_dev, rel=1e-6, abs=1e-7)
    for name, g in g_dev.items():
        np.testing.assert_allclose(g_glob[name], g, rtol=RTOL, atol=1e-6, err_msg=name)
    # no offsets at all: the same defaults as the masks' None
    g = torch.Generator().manual_seed(1)
    q, d, n = (torch.randn(5, 4, generator=g) for _ in range(3))
    torch.testing.assert_close(losses.inbatch_loss_global(q, d), losses.inbatch_loss(q, d))
    torch.testing.assert_close(losses.star_loss_global(q, d, n), losses.star_loss(q, d, n))
    torch.testing.assert_close(losses.randneg_loss_global(q, d, n), losses.randneg_loss(q, d, n))
    with pytest.raises(ValueError):
        losses.training_loss(negative_type, q, d, n, t, scope="node")


def test_adore_global_in_one_process_equals_adore_loss():
    data = dw.make_adore(5, 2)
    t = dw.adore_tensors(data, slice(0, 5))
    q = torch.randn(5, 8, requires_grad=True)
    a = losses.adore_training_loss(q, t["cand"], t["labels"], t["valid"], 3, scope="global")
    b = losses.adore_loss(q, t["cand"], t["labels"], t["valid"], 3)
    torch.testing.assert_close(a, b)
    per_query = losses.adore_query_losses(q, t["cand"], t["labels"], t["valid"], 3)
    assert per_query.shape == (5,)
    torch.testing.assert_close(per_query.mean(), b)


# --------------------------------------------------------------------------- W processes: primitives
def test_run_local_ranks_names_a_failed_rank_and_ends_the_others():
    """(Its results in rank order are checked by tests/test_selfcheck.py's gloo_ddp row.)"""
    start = time.monotonic()
    with pytest.raises(dd.DistributedError, match=r"rank 1 of 2 failed: ValueError: rank 1 gives up") as e:
        dd.run_local_ranks(dw.rank_sum_or_fail, 2, (1,), timeout_s=120, collective_timeout_s=100)
    assert "Traceback" in e.value.details
    assert time.monotonic() - start < 60  # rank 0, waiting in its all-reduce, was ended, not waited for



def test_collectives_on_three_ranks(pool):
    res = pool(3).run("collectives")
    for r, x in enumerate(res):
        assert (x["rank"], x["world"], x["local_rank"], x["main"], x["distributed"]) == (r, 3, r, r == 0, True)
        assert x["again"] == "cpu"
        np.testing.assert_array_equal(x["sum_tensor"], [3.0, 3.0])
        assert x["sum_int"] == 6 and x["sum_float"] == pytest.approx(1.5)
        assert x["any_last"] is True and x["any_none"] is False
        assert x["broadcast"] == {"from": 2}
        assert x["objects"] == [("rank", 0), ("rank", 1), ("rank", 2)]
        # unequal row counts 1, 2, 3 gathered in rank order, padding cut off
        np.testing.assert_array_equal(x["gathered_rows"], np.repeat([0, 1, 1, 2, 2, 2], 2).reshape(6, 2))
        assert x["sizes"] == [0, 10, 20]


@pytest.mark.parametrize("sizes", [[3, 1], [2, 0, 3]], ids=["2ranks", "3ranks-one-empty"])
def test_all_gather_with_grad_unequal_sizes_exact_gradients(pool, sizes):
    seed = 11
    res = pool(len(sizes)).run("gather", sizes=sizes, seed=seed)
    inputs = [dw.gather_inputs(sizes, r, seed) for r in range(len(sizes))]
    full = torch.cat([base.T for base, _ in inputs])  # (N, 3): every rank's rows in rank order
    # every rank's loss is sum((w_s + s + 1) * gathered): rank r's rows get the sum over s
    d_total = sum(w + (s + 1) for s, (_, w) in enumerate(inputs))  # (N, 3)
    start = 0
    for r, x in enumerate(res):
        np.testing.assert_array_equal(x["gathered"], full.numpy())
        np.testing.assert_array_equal(x["no_grad"], full.numpy())
        assert x["requires_grad"] is False
        np.testing.assert_allclose(x["grad"], d_total[start:start + sizes[r]].numpy(), rtol=1e-6, atol=1e-6)
        start += sizes[r]


# --------------------------------------------------------------------------- W processes: losses under DDP
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("negative_type", ["star", "inbatch", "random"])
def test_global_scope_ddp_equals_one_process_on_the_global_batch(pool, negative_type, world):
    B, seed = 6, 5
    res = pool(world).run("dense", negative_type=negative_type, scope="global", B=B, seed=seed)
    ref = reference_dense(negative_type, B, seed)
    # the data must make the scopes differ, or this test could not see position masks or missing negatives
    assert abs(ref["loss"][0] - reference_dense(negative_type, B, seed, shares=world)["loss"][0]) > 1e-3
    assert np.mean([r["loss"][0] for r in res]) == pytest.approx(ref["loss"][0], rel=1e-5, abs=ATOL)
    assert_same_grads(res, ref, f"{negative_type} W={world}")


@pytest.mark.parametrize("negative_type", ["star", "inbatch", "random"])
def test_device_scope_ddp_equals_mean_of_independent_shares(pool, negative_type):
    B, seed, world = 6, 8, 2
    res = pool(world).run("dense", negative_type=negative_type, scope="device", B=B, seed=seed)
    ref = reference_dense(negative_type, B, seed, shares=world)
    assert np.mean([r["loss"][0] for r in res]) == pytest.approx(ref["loss"][0], rel=1e-5, abs=ATOL)
    assert_same_grads(res, ref, f"device {negative_type}")


@pytest.mark.parametrize("world,B", [(2, 5), (3, 7)])
@pytest.mark.parametrize("negative_type", ["star", "inbatch", "random"])
def test_unequal_shares_global_scope_equals_one_process(pool, negative_type, world, B):
    """The last batch of an epoch: shares of 3+2 rows, or 3+2+2."""
    seed = 21
    res = pool(world).run("dense", negative_type=negative_type, scope="global", B=B, seed=seed)
    rows = [r["rows"] for r in res]
    assert len({b - a for a, b in rows}) == 2  # really unequal
    ref = reference_dense(negative_type, B, seed)
    assert np.mean([r["loss"][0] for r in res]) == pytest.approx(ref["loss"][0], rel=1e-5, abs=ATOL)
    assert_same_grads(res, ref, f"unequal {negative_type} W={world} B={B}")


@pytest.mark.parametrize("world,B", [(2, 6), (3, 7)])
def test_adore_ddp_global_and_device_scopes(pool, world, B):
    seed = 4
    glob = pool(world).run("adore", scope="global", B=B, seed=seed)
    ref = reference_adore(B, seed)
    assert np.mean([r["loss"] for r in glob]) == pytest.approx(ref["loss"], rel=1e-5, abs=ATOL)
    assert_same_grads(glob, ref, f"adore global W={world}")
    dev = pool(world).run("adore", scope="device", B=B, seed=seed)
    ref_dev = reference_adore(B, seed, shares=world)
    assert np.mean([r["loss"] for r in dev]) == pytest.approx(ref_dev["loss"], rel=1e-5, abs=ATOL)
    assert_same_grads(dev, ref_dev, f"adore device W={world}")
    if B % world:  # unequal shares: a mean of the ranks' means is not the global mean
        assert abs(ref["loss"] - ref_dev["loss"]) > 1e-6


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_optimizer_steps_under_ddp_give_the_single_process_weights(pool, optimizer):
    B, seed, steps = 6, 30, 3
    res = pool(2).run("dense", negative_type="star", scope="global", B=B, seed=seed, steps=steps,
                      optimizer=optimizer, lr=1e-3)
    ref = reference_dense("star", B, seed, steps=steps, optimizer=optimizer, lr=1e-3)
    for k in range(steps):
        assert np.mean([r["loss"][k] for r in res]) == pytest.approx(ref["loss"][k], rel=1e-5, abs=ATOL)
    start = dw.params_of(dw.make_model())
    moved = max(np.abs(ref["params"][n] - start[n]).max() for n in start)
    assert moved > 1e-4  # the steps did change the weights
    assert_same_weights(res, ref, optimizer)


def test_gradient_checkpointing_ddp_step_equals_one_process(pool):
    B, seed = 6, 13
    res = pool(2).run("dense", negative_type="star", scope="global", B=B, seed=seed, checkpointing=True,
                      steps=2, optimizer="adamw")
    ref = reference_dense("star", B, seed, steps=2, optimizer="adamw")
    assert np.mean([r["loss"][1] for r in res]) == pytest.approx(ref["loss"][1], rel=1e-5, abs=ATOL)
    assert all(r["checkpointing"] for r in res)
    assert_same_grads(res, ref, "checkpointing")
    assert_same_weights(res, ref, "checkpointing")
