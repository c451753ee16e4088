"""One contract battery over every registered method (PEFT-style table x battery).

For each method we train real clients on the tiny model with DP (one round) and check:
only trainable tensors change; payload keys are trainable; aggregate does not mutate its
inputs; aggregating identical payloads gives back the client's model; exact methods aggregate
to the weighted mean of the clients' effective weights; FedIT's gap is measured and positive.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dpfedlora.methods import METHODS
from dpfedlora.methods.base import aggregation_gap
from tests.helpers import tiny_setup


def test_the_battery_covers_the_registry_and_the_config_schemas():
    from dpfedlora.config import METHOD_CONFIGS

    assert sorted(METHODS) == sorted(METHOD_CONFIGS)  # built-ins; both registries agree
    for name, cls in METHODS.items():
        assert METHOD_CONFIGS[name] is cls.config_cls, name


def _train_round(tmp_path, method_name, rnd=1, clients=(0, 1, 2)):
    fed = tiny_setup(
        f"method.name={method_name}",
        "privacy.noise_multiplier=1.0",
        "train.local_steps=3",
        "data.partition.kind=dirichlet",
        "data.partition.alpha=1.0",
        "train.batch_size=16",
    )
    m = fed.method
    engine = fed.trainer
    state = m.init_state()
    out = []
    for i in clients:
        c = fed.clients[i]
        view = m.client_view(state, c.spec, rnd)
        engine.load(view)
        before = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
        res = engine.train_local(c, rnd, view, noise_multiplier=1.0)
        after = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
        out.append((c, view, res, before, after))
    return fed, m, state, out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract(tmp_path, name):
    fed, m, state, trained = _train_round(tmp_path, name)
    rnd = 1
    trainable = set(m.trainable_names(rnd))
    assert trainable, name
    payloads, specs, weights, views = [], [], [], []
    for c, view, res, before, after in trained:
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        # only trainable tensors change (and some do: the silent no-update bug would fail here)
        assert changed and changed <= trainable, (name, changed - trainable)
        payload = m.payload(res.trained, view, c.spec, rnd)
        assert set(payload) <= trainable, (name, set(payload) - trainable)
        payloads.append(payload)
        specs.append(c.spec)
        weights.append(c.spec.num_examples)
        views.append({**view, **res.trained})
        # what the server rebuilds from the payload equals what the client trained
        rebuilt = m.client_update(view, payload, c.spec)
        for n in res.trained:
            torch.testing.assert_close(rebuilt[n], res.trained[n], atol=1e-6, rtol=0)

    # aggregate is pure
    p_copy, s_copy = copy.deepcopy(payloads), copy.deepcopy(state)
    new_state = m.aggregate(payloads, weights, state, specs, rnd)
    for a, b in zip(payloads, p_copy):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(state[k], s_copy[k]) for k in state)

    # aggregating identical payloads returns them (in effect on the model, and per tensor)
    c0 = specs[0]
    same = m.aggregate([payloads[0], payloads[0]], [1.0, 3.0], state, [c0, c0], rnd)
    got = m.effective_deltas(m.eval_view(same), None)
    want = m.effective_deltas(views[0], c0)
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer], atol=1e-5, rtol=1e-4)
    if name not in ("flexlora", "full"):  # these store ΔW, not the factors themselves
        for k, v in payloads[0].items():
            torch.testing.assert_close(same[k], v, atol=1e-6, rtol=1e-6)

    # exactness: aggregated effective weights == weighted mean of the clients' (1e-5)
    gap = aggregation_gap(m, views, specs, weights, new_state)
    if METHODS[name].exact:
        ref = {}
        for w, v, s in zip(weights, views, specs):
            for layer, d in m.effective_deltas(v, s).items():
                ref[layer] = ref.get(layer, 0) + (w / sum(weights)) * d
        glob = m.effective_deltas(m.eval_view(new_state), None)
        for layer in ref:
            torch.testing.assert_close(glob[layer], ref[layer], atol=1e-5, rtol=0)
        assert gap < 1e-5, (name, gap)
    else:
        assert gap > 1e-3, (name, gap)  # FedIT: mean(B)·mean(A) ≠ mean(B·A), and we measure it


def test_rolora_alternates_b_first(tmp_path):
    fed = tiny_setup("method.name=rolora")
    m = fed.method
    names1, names2 = set(m.trainable_names(1)), set(m.trainable_names(2))
    head = set(m.head)
    assert all("lora_B" in n for n in names1 - head)
    assert all("lora_A" in n for n in names2 - head)
    assert set(m.trainable_names(3)) == names1


def test_flexlora_ranks_and_redistribution(tmp_path):
    fed, m, state, trained = _train_round(tmp_path, "flexlora")
    ranks = [c.spec.rank for c, *_ in trained]
    assert ranks == [4, 2, 4]  # default: alternate rank and rank // 2
    payloads = [m.payload(r.trained, v, c.spec, 1) for c, v, r, *_ in trained]
    layer = m.layers[0]
    assert payloads[1][layer.a].shape == (2, layer.in_features)  # only r_k directions uploaded
    new = m.aggregate(
        payloads,
        [c.spec.num_examples for c, *_ in trained],
        state,
        [c.spec for c, *_ in trained],
        1,
    )
    # a rank-2 client receives the best rank-2 approximation of ΔW_g (official split)
    spec = trained[1][0].spec
    view = m.client_view(new, spec, 2)
    eff = m.effective_deltas(view, spec)[layer.name]
    delta = new[f"delta/{layer.name}"]
    u, s, vh = torch.linalg.svd(delta.double())
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close(eff.double(), best, atol=1e-5, rtol=0)
    assert torch.all(view[layer.a][2:] == 0) and torch.all(view[layer.b][:, 2:] == 0)
