"""GPU paths against their CPU references: mixed-precision STAR steps, faiss on one and two GPUs and its CPU
fallback, ADORE with the index on a GPU, DDP over NCCL, TorchFlatIndex on CUDA.

Every test is marked ``gpu``: without a usable CUDA GPU it is skipped with the
reason (tests/conftest.py).  On a GPU machine run

    python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider

Tests that need two GPUs, a faiss with GPU support or bf16 skip on their own,
saying which.  Tolerances: fp32 on the GPU against the CPU to summation order
(1e-4 relative), fp16/bf16 against fp32 to their rounding.
"""
import copy
import logging

import numpy as np
import pytest
import torch

import dist_workers as dw
from drhard import index as index_mod
from drhard import losses
from drhard.device import autocast
from drhard.optim import Lamb, param_groups

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)


def need_gpus(n: int) -> None:
    have = torch.cuda.device_count()
    if have < n:
        pytest.skip(f"needs {n} GPUs, {have} visible")


def need_faiss_gpu(n: int = 1) -> None:
    need_gpus(n)
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip(f"faiss {faiss.__version__} has no GPU support (install the gpu extra)")
    if faiss.get_num_gpus() < n:
        pytest.skip(f"faiss sees {faiss.get_num_gpus()} GPU(s), needs {n}")


def need_bf16() -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")


def rows(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def brute_force(x, q, k):
    s = q.astype(np.float64) @ x.astype(np.float64).T  # (Q, N)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(s, order, 1), order


def assert_same_topk(ref_s, ref_i, s, i, atol=1e-3):
    """Scores equal within atol; ids equal wherever the reference score is not within atol of a neighbour."""
    assert s.shape == ref_s.shape and i.shape == ref_i.shape
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=atol)
    step = np.abs(np.diff(ref_s.astype(np.float64), axis=1))  # (Q, k-1)
    gaps = np.full(ref_s.shape, np.inf)
    gaps[:, 1:] = step
    gaps[:, :-1] = np.minimum(gaps[:, :-1], step)
    clear = gaps > atol
    assert clear.mean() > 0.9  # random rows: almost every place is untied, or the test proves little
    np.testing.assert_array_equal(i[clear], ref_i[clear])


# --------------------------------------------------------------------------- mixed-precision STAR steps
def star_inputs(B=6, seed=3):
    return dw.batch_tensors(dw.make_batch(B, seed), slice(0, B))


def star_loss_of(model, t):
    q = model(t["query_ids"], t["query_mask"])  # (B, D)
    d = model(t["doc_ids"], t["doc_mask"])  # (B, D)
    n = model(t["neg_ids"], t["neg_mask"])  # (B*h, D)
    return losses.training_loss("star", q, d, n, t, scope="device")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_star_step_under_autocast_and_grad_scaler_as_training(precision):
    """The Trainer's --fp16 (autocast fp16 + GradScaler from 2**16) and --bf16 (autocast bf16) on the tiny model."""
    if precision == "bf16":
        need_bf16()
    model = dw.make_model()
    t_cpu = star_inputs()
    ref_model = copy.deepcopy(model)
    ref_loss = star_loss_of(ref_model, t_cpu)  # fp32 on the CPU
    ref_loss.backward()
    ref_grads = dw.grads_of(ref_model)
    model.to(CUDA)
    t = {k: v.to(CUDA) for k, v in t_cpu.items()}
    before = dw.params_of(model)
    opt = Lamb(param_groups(model, 0.01), lr=1e-3, eps=1e-8)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    for attempt in range(24):  # fp16: overflowing first scales are skipped and halved, as in training
        opt.zero_grad(set_to_none=True)
        with autocast(CUDA, fp16=precision == "fp16", bf16=precision == "bf16"):
            loss = star_loss_of(model, t)
        assert loss.dtype == torch.float32  # the losses score in fp32 whatever the forward's precision
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = dw.grads_of(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if precision != "fp16" or scaler.get_scale() >= scale:
            break
        for name, value in dw.params_of(model).items():
            np.testing.assert_array_equal(value, before[name], err_msg=f"skipped step moved {name}")
    else:
        pytest.fail("the GradScaler skipped every step")
    assert np.isfinite(loss.item())
    tol = 1e-2 if precision == "fp16" else 2e-2
    assert loss.item() == pytest.approx(ref_loss.item(), rel=tol)
    top = max(np.abs(g).max() for g in ref_grads.values())
    for name, g in grads.items():
        assert np.isfinite(g).all(), name
        # the unscaled gradients are the fp32 ones up to the precision's rounding
        np.testing.assert_allclose(g, ref_grads[name], rtol=0, atol=(0.05 if precision == "fp16" else 0.25) * top,
                                   err_msg=name)
    after = dw.params_of(model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert max(np.abs(after[n] - before[n]).max() for n in before) > 1e-4  # the step was taken


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_encode_on_cuda_matches_fp32_cpu(precision):
    from drhard.selfcheck import RandomTokens
    from drhard.encode import encode_cache
    if precision == "bf16":
        need_bf16()
    model = dw.make_model().eval()
    cache = RandomTokens(100, 3, 38, vocab=dw.VOCAB, seed=2)
    ref = encode_cache(model, cache, 32, 16, torch.device("cpu"), progress=False, multi_gpu=False)
    got = encode_cache(model, cache, 32, 16, CUDA, fp16=precision == "fp16", bf16=precision == "bf16",
                       progress=False, multi_gpu=False)
    tol = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 1e-1}[precision]
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    assert np.abs(ref - ref[:1]).max() > 10 * tol  # rows differ by more than the tolerance


# --------------------------------------------------------------------------- faiss on GPUs
def test_faiss_index_on_one_gpu_equals_brute_force():
    need_faiss_gpu(1)
    import faiss
    x, q = rows(4000, 64, 1), rows(64, 64, 2)
    index = index_mod.build_index(x, gpus=[0])
    assert not isinstance(index, faiss.IndexFlatIP), "the index stayed on the CPU"
    assert index.ntotal == 4000
    s, i = index_mod.search(index, q, 50, progress=False)
    assert_same_topk(*brute_force(x, q, 50), s, i)
    assert_same_topk(*index_mod.search(index_mod.build_index(x), q, 50, progress=False), s, i)  # == CPU index


def test_faiss_index_sharded_over_two_gpus_equals_brute_force():
    need_faiss_gpu(2)
    import faiss
    x, q = rows(4001, 64, 3), rows(64, 64, 4)  # shards of 2001 and 2000 rows
    index = index_mod.build_index(x, gpus=[0, 1])
    assert not isinstance(index, faiss.IndexFlatIP), "the index stayed on the CPU"
    assert index.ntotal == 4001
    s, i = index_mod.search(index, q, 50, progress=False)
    assert_same_topk(*brute_force(x, q, 50), s, i)  # ids of the second shard are global rows
    assert_same_topk(*index_mod.search(index_mod.build_index(x), q, 50, progress=False), s, i)  # == CPU index
    assert (i >= 2001).any() and (i < 2001).any()


def test_faiss_index_that_does_not_fit_the_gpu_falls_back_to_the_cpu(monkeypatch, caplog):
    need_faiss_gpu(1)
    import faiss
    asked = []

    def tiny_free(gpu):
        asked.append(gpu)
        return 1 << 20  # 1 MiB free

    monkeypatch.setattr(index_mod, "gpu_free_bytes", tiny_free)
    x, q = rows(3000, 64, 5), rows(32, 64, 6)
    with caplog.at_level(logging.WARNING, logger="drhard.index"):
        index = index_mod.build_index(x, gpus=[0])
    assert asked == [0]
    assert isinstance(index, faiss.IndexFlatIP)
    assert "does not fit" in caplog.text
    s, i = index_mod.search(index, q, 20, progress=False)
    assert_same_topk(*brute_force(x, q, 20), s, i)
    assert_same_topk(*index_mod.search(index_mod.build_index(x), q, 20, progress=False), s, i)


def test_adore_step_with_the_index_on_a_gpu_equals_the_cpu():
    """Frozen passages in a GPU faiss index, queries encoded on the GPU, ADORE loss and gradients == CPU."""
    need_faiss_gpu(1)
    import faiss
    model = dw.make_model()
    cpu_model = copy.deepcopy(model)
    data = dw.make_adore(8, 3)
    pemb = rows(300, 8, 7)  # (P, D) frozen passage embeddings
    index = index_mod.build_index(pemb, gpus=[0])
    assert not isinstance(index, faiss.IndexFlatIP)
    ids, mask = dw.pad(data["queries"])
    model.to(CUDA)
    q = model(ids.to(CUDA), mask.to(CUDA))  # (B, D) on the GPU
    s_gpu, retrieved = index_mod.search(index, q.detach().cpu().numpy(), 20, progress=False)
    ref_s, ref_i = index_mod.search(index_mod.build_index(pemb), q.detach().cpu().numpy(), 20, progress=False)
    assert_same_topk(ref_s, ref_i, s_gpu, retrieved)
    cand_ids, labels, valid = losses.build_adore_lists(retrieved, data["rels"])
    cand = losses.gather_candidate_embeddings(pemb, cand_ids, valid)  # (B, M, D)
    loss = losses.adore_loss(q, cand.to(CUDA), torch.from_numpy(labels).to(CUDA), torch.from_numpy(valid).to(CUDA),
                             20)
    loss.backward()
    q_cpu = cpu_model(ids, mask)
    ref = losses.adore_loss(q_cpu, cand, torch.from_numpy(labels), torch.from_numpy(valid), 20)
    ref.backward()
    assert ref.item() > 0 and loss.item() == pytest.approx(ref.item(), rel=1e-4)
    ref_grads, grads = dw.grads_of(cpu_model), dw.grads_of(model)
    top = max(np.abs(g).max() for g in ref_grads.values())
    assert top > 1e-3
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-4 * top, err_msg=name)
    before = dw.params_of(model)
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert max(np.abs(dw.params_of(model)[n] - before[n]).max() for n in before) > 1e-4


# --------------------------------------------------------------------------- DDP over NCCL
def test_nccl_ddp_global_scope_star_equals_one_process():
    """The gloo equivalence scenario with backend NCCL, one GPU per rank: loss and every gradient."""
    need_gpus(2)
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    B, seed = 6, 5
    pool = dw.WorkerPool(2, device="cuda")
    try:
        res = pool.run("dense", negative_type="star", scope="global", B=B, seed=seed)
    finally:
        pool.close()
    ref = dw.reference_dense("star", B, seed)
    assert np.mean([r["loss"][0] for r in res]) == pytest.approx(ref["loss"][0], rel=1e-4)
    top = max(np.abs(g).max() for g in ref["grads"].values())
    assert top > 1e-3
    for name, g in ref["grads"].items():
        for k, r in enumerate(res):
            np.testing.assert_allclose(r["grads"][name], g, rtol=1e-4, atol=1e-4 * top,
                                       err_msg=f"rank {k}: gradient of {name}")


# --------------------------------------------------------------------------- TorchFlatIndex on CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_torch_flat_index_on_cuda_equals_cpu(dtype):
    from drhard.exact_search import FILLER_ID, TorchFlatIndex
    x, q = rows(5000, 64, 8), rows(50, 64, 9)
    cpu = TorchFlatIndex(x, device="cpu", dtype=dtype, chunk_rows=1024)
    gpu = TorchFlatIndex(x, device=CUDA, dtype=dtype, chunk_rows=1024)
    s_gpu, i_gpu = gpu.search(torch.from_numpy(q).to(CUDA), 30)
    assert s_gpu.device.type == "cuda" and i_gpu.device.type == "cuda"
    s_cpu, i_cpu = cpu.search(q, 30)
    assert_same_topk(s_cpu.numpy().astype(np.float64), i_cpu.numpy(), s_gpu.cpu().numpy(), i_gpu.cpu().numpy())
    stored = x if dtype == torch.float32 else x.astype(np.float16).astype(np.float32)
    assert_same_topk(*brute_force(stored, q, 30), s_gpu.cpu().numpy(), i_gpu.cpu().numpy())
    s, i = TorchFlatIndex(x[:7], device=CUDA, dtype=dtype).search(q[:2], 10)  # fewer rows than k
    assert (i[:, 7:] == FILLER_ID).all() and sorted(i[0, :7].tolist()) == list(range(7))
