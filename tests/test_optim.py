"""drhard.optim.Lamb against a float64 numpy transcription of the pytorch-lamb update rule."""
import io

import numpy as np
import pytest
import torch

from drhard.model import build_tiny_roberta
from drhard.optim import Lamb, build_optimizer, param_groups


def numpy_lamb(params, grads_per_step, lr, betas, eps, wd, adam=False):
    """Plain loops, float64: m, v without bias correction; ratio = min(||p||, 10) / ||u||."""
    b1, b2 = betas
    ps = [p.astype(np.float64).copy() for p in params]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    history = []
    for grads in grads_per_step:
        for k, g in enumerate(grads):
            g = g.astype(np.float64)
            ms[k] = b1 * ms[k] + (1 - b1) * g
            vs[k] = b2 * vs[k] + (1 - b2) * g * g
            u = ms[k] / (np.sqrt(vs[k]) + eps)
            if wd != 0:
                u = u + wd * ps[k]
            w_norm = min(np.sqrt(np.sum(ps[k] ** 2)), 10.0)
            u_norm = np.sqrt(np.sum(u ** 2))
            ratio = 1.0 if (w_norm == 0 or u_norm == 0 or adam) else w_norm / u_norm
            ps[k] = ps[k] - lr * ratio * u
        history.append([p.copy() for p in ps])
    return history


def make_case(seed, steps=5):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(4, 3)) * 0.5,      # ordinary weight
              np.zeros(5),                        # zero weight: trust ratio 1
              rng.normal(size=(30, 20)) * 2.0,    # ||p|| ~ 49: the clamp at 10 is hit
              rng.normal(size=(7,)) * 0.1]
    grads = [[rng.normal(size=p.shape) for p in params] for _ in range(steps)]
    grads[0][3] = np.zeros(7)  # first gradient zero: u = 0 (without wd) -> adam_norm 0 -> trust ratio 1
    return params, grads


def run_torch(params, grads, foreach, **kw):
    ts = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in params]
    opt = Lamb(ts, foreach=foreach, **kw)
    out = []
    for gs in grads:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        out.append([t.detach().numpy().astype(np.float64).copy() for t in ts])
    return out, opt, ts


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("adam", [False, True])
def test_lamb_matches_numpy_reference(foreach, wd, adam):
    params, grads = make_case(0)
    kw = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=wd, adam=adam)
    got, opt, _ = run_torch(params, grads, foreach, **kw)
    want = numpy_lamb(params, grads, kw["lr"], kw["betas"], kw["eps"], wd, adam)
    for step_got, step_want in zip(got, want):
        for a, b in zip(step_got, step_want):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_lamb_trust_ratio_and_clamp_are_what_the_state_says():
    params, grads = make_case(1, steps=1)
    _, opt, ts = run_torch(params, grads, True, lr=0.1, weight_decay=0.0)
    big = opt.state[ts[2]]
    assert np.linalg.norm(params[2]) > 10
    assert big["weight_norm"].item() == 10.0
    # first step without bias correction: m = 0.1 g, v = 0.001 g^2 -> u = 0.1 g / (sqrt(0.001) |g| + eps)
    g = grads[0][2]
    u = 0.1 * g / (np.sqrt(0.001) * np.abs(g) + 1e-6)
    assert big["adam_norm"].item() == pytest.approx(np.linalg.norm(u), rel=1e-5)
    assert big["trust_ratio"].item() == pytest.approx(10.0 / np.linalg.norm(u), rel=1e-5)
    # ||delta p|| = lr * ratio * ||u|| = lr * min(||p||, 10): 1.0 here, not lr * ||p|| ~ 4.9 (no clamp)
    assert np.linalg.norm(ts[2].detach().numpy() - params[2]) == pytest.approx(0.1 * 10.0, rel=1e-4)
    assert opt.state[ts[1]]["trust_ratio"].item() == 1.0          # zero weights
    # zero weights move by exactly lr * u (trust ratio 1)
    g1 = grads[0][1]
    np.testing.assert_allclose(ts[1].detach().numpy(), -0.1 * 0.1 * g1 / (np.sqrt(0.001) * np.abs(g1) + 1e-6),
                               rtol=1e-5)


def test_params_without_grad_are_untouched_and_get_no_state():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = Lamb([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3)) and len(opt.state[b]) == 0
    assert not torch.equal(a, torch.ones(3))


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip_resumes_identically(foreach):
    params, grads = make_case(3, steps=6)
    full, _, _ = run_torch(params, grads, foreach, lr=0.02, weight_decay=0.01)

    ts = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in params]
    opt = Lamb([{"params": ts[:2], "weight_decay": 0.01}, {"params": ts[2:], "weight_decay": 0.01}],
               lr=0.02, foreach=foreach)
    for gs in grads[:3]:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [t.detach().clone() for t in ts]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    ts2 = [torch.nn.Parameter(p) for p in saved["params"]]
    opt2 = Lamb([{"params": ts2[:2], "weight_decay": 0.5}, {"params": ts2[2:], "weight_decay": 0.5}],
                lr=1.0, foreach=foreach)  # hyper-parameters come back from the state dict
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 0.02 and opt2.param_groups[1]["weight_decay"] == 0.01
    assert opt2.state[ts2[0]]["step"].item() == 3
    for gs in grads[3:]:
        for t, g in zip(ts2, gs):
            t.grad = torch.tensor(g, dtype=torch.float32)
        opt2.step()
    for a, b in zip(full[-1], [t.detach().numpy() for t in ts2]):
        np.testing.assert_array_equal(a.astype(np.float32), b)


def test_param_groups_follow_the_original_no_decay_rule():
    model = build_tiny_roberta(vocab_size=50, hidden=16, layers=1, heads=2)
    groups = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert "norm.weight" in decay                      # head LayerNorm named `norm`: decayed, as in the original
    assert "norm.bias" in no_decay and "embeddingHead.bias" in no_decay
    assert "embeddingHead.weight" in decay
    assert "roberta.embeddings.LayerNorm.weight" in no_decay
    assert "roberta.encoder.layer.0.output.LayerNorm.weight" in no_decay
    assert "roberta.encoder.layer.0.attention.self.query.weight" in decay
    for n in decay:
        assert "bias" not in n and "LayerNorm.weight" not in n


def test_lamb_trains_a_tiny_model_on_groups():
    torch.manual_seed(0)
    model = build_tiny_roberta(vocab_size=50, hidden=16, layers=1, heads=2)
    opt = build_optimizer("lamb", param_groups(model, 0.01), lr=1e-2, eps=1e-8)
    ids = torch.randint(3, 50, (4, 6))
    mask = torch.ones_like(ids)
    target = torch.randn(4, model.output_embedding_size)
    before = None
    for _ in range(5):
        loss = ((model.encode(ids, mask) - target) ** 2).mean()
        before = loss.item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((model.encode(ids, mask) - target) ** 2).mean().item() < before
    with pytest.raises(ValueError):
        build_optimizer("sgd", param_groups(model, 0.01), lr=1e-2, eps=1e-8)
