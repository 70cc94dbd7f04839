"""Weight decay as the course describes it: L2 and L1 on kernels, optionally on biases, and an activity
penalty, each reaching the optimiser or the loss, on tiny real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import load_source
from cnnbench.runtime import set_determinism
from cnnbench.train import ActivityPenalty, fit, make_optimizer, penalties
from tests.helpers import tiny_study

CPU = torch.device("cpu")


def _spec(variant="batchnorm", **protocol):
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32, **protocol}))
    return study.variants[variant]


def _model(spec):
    from cnnbench.train import init_model

    return init_model(spec, 0, CPU)


def test_weight_decay_spares_biases_and_batchnorm_only_when_asked():
    spec = _spec(weight_decay=0.01, decay_biases=False)
    model = _model(spec)
    groups = make_optimizer(model, spec.train).param_groups
    kernels = {id(p) for n, p in model.named_parameters() if p.dim() > 1}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    spared = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == kernels and spared and not (spared & kernels)
    assert spared == {id(p) for p in model.parameters()} - kernels  # biases and BN scale/shift
    everything = make_optimizer(model, _spec(weight_decay=0.01).train).param_groups
    assert all(g["weight_decay"] == 0.01 for g in everything)


@pytest.mark.parametrize(("protocol", "kind", "expect"), [
    ({}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ({"nesterov": False}, torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ({"momentum": 0.0}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),  # torch refuses Nesterov without it
    ({"optimizer": "adam", "momentum": 0.8}, torch.optim.Adam, {"betas": (0.8, 0.999)}),
    ({"optimizer": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
])
def test_optimizer_knobs_reach_the_torch_optimizer(protocol, kind, expect):
    spec = _spec(**protocol)
    opt = make_optimizer(_model(spec), spec.train)
    assert type(opt) is kind
    assert {k: opt.defaults[k] for k in expect} == expect


def test_l1_covers_kernels_and_biases_as_decay_biases_says():
    spec = _spec(l1=1e-4, decay_biases=False)
    model = _model(spec)
    kernels = {id(p) for p in model.parameters() if p.dim() > 1}
    assert {id(p) for p in penalties(model, spec.train)[0]} == kernels
    assert {id(p) for p in penalties(model, _spec(l1=1e-4).train)[0]} == {id(p) for p in model.parameters()}
    assert penalties(model, _spec().train) == ([], None)


def test_the_activity_penalty_is_the_mean_absolute_activation_of_each_layer():
    spec = _spec(activity=0.5)
    model = _model(spec)
    penalty = ActivityPenalty(model, 0.5)
    outs = []
    for layer in penalty.layers:
        layer.register_forward_hook(lambda m, a, o: outs.append(o.abs().mean()))
    model.train()
    model(torch.randn(4, *spec.input_shape))
    assert len(outs) == len(penalty.layers) >= 2
    assert penalty.take().item() == pytest.approx(0.5 * sum(o.item() for o in outs), rel=1e-6)
    with torch.no_grad():
        model(torch.randn(4, *spec.input_shape))
    assert penalty._terms == []  # evaluation adds nothing


@pytest.fixture(scope="module")
def digits():
    images = load_source(load_study(tiny_study()).data, 0)
    idx = np.arange(len(images.y))
    return images, idx[:200], idx[200:]


def _final_norms(result):
    return result.epochs[-1]["weight_norm"]


def test_stronger_penalties_shrink_the_weights_they_act_on(digits):
    images, tr, va = digits
    set_determinism(CPU, 1)
    run = lambda **kw: fit(_spec("baseline", **kw), images, tr, va, seed=0, device=CPU)  # noqa: E731
    none, l2, l1 = run(weight_decay=0.0), run(weight_decay=0.05), run(weight_decay=0.0, l1=1e-3)
    for layer, plain in _final_norms(none).items():
        assert _final_norms(l2)[layer] < plain and _final_norms(l1)[layer] < plain, layer
    active = run(weight_decay=0.0, activity=0.5)
    assert [e["train_loss"] for e in active.epochs] != [e["train_loss"] for e in none.epochs]
