"""Prompt learners (coop, csc, dualcoop) and the asymmetric loss.

Gradients reach exactly the context vectors (the encoders stay bit-identical after a step);
a learner saved and loaded gives identical scores for label names never trained on; csc
refuses them; DualCoOp's per-label probability does not move when other labels are added;
DualCoOp's score and ASL are re-derived here from the papers' formulas with loops; each
learner lowers its loss in a few steps on a micro world; `sigrl train` with the prompts
alone writes a run that `sigrl eval` and the scorer read back.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from sigrl.errors import ConfigError, UsageError
from sigrl.modules.dualcoop import DualCoOpPrompts, dualcoop_logits
from sigrl.modules.prompt_learner import ClassSpecificPrompts, CoOpPrompts, FixedPrompts
from sigrl.prompts import load_prompts

SEEN = ["red square", "blue circle", "green star"]
UNSEEN = ["purple ring", "yellow cross", "a dog"]


def _learner(kind, backbone, **kw):
    g = torch.Generator().manual_seed(0)
    if kind == "coop":
        return CoOpPrompts(backbone, "{}.", n_ctx=3, generator=g, **kw)
    if kind == "csc":
        return ClassSpecificPrompts(backbone, "{}.", label_names=SEEN, n_ctx=3, generator=g, **kw)
    return DualCoOpPrompts(backbone, "{}.", n_ctx=3, generator=g, **kw)


def _feats(B=4, P=5, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1), torch.randn(B, P, D, generator=g)


def test_coop_from_a_phrase_starts_at_the_hand_prompt(tiny_backbone):
    hand = FixedPrompts(tiny_backbone, "a photo of a {}.")(SEEN + UNSEEN)
    coop = CoOpPrompts(tiny_backbone, "{}.", init="a photo of a")
    assert coop.n_ctx == 4  # a / photo / of / a
    assert torch.allclose(coop(SEEN + UNSEEN), hand, atol=1e-6)


@pytest.mark.parametrize("kind", ["coop", "csc", "dualcoop"])
@pytest.mark.parametrize("with_head", [False, True])
def test_gradients_reach_exactly_the_context(tiny_backbone, kind, with_head):
    from sigrl.losses.asl import AsymmetricLoss
    from sigrl.model import TrainModule
    from sigrl.modules.adapter import AdapterHead

    before = copy.deepcopy(tiny_backbone.state_dict())
    learner = _learner(kind, tiny_backbone)
    head = AdapterHead(64, combine="l2") if with_head else None
    model = TrainModule(head, learner, AsymmetricLoss())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    context = {"text._context"} | ({"text.negative_context"} if kind == "dualcoop" else set())
    head_names = {f"head.{n}" for n, _ in head.named_parameters()} if head is not None else set()
    assert trainable == context | head_names
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    g, l = _feats()
    observed = torch.tensor([[1, -1, 0], [-1, 1, 0], [0, 0, 1], [1, 1, -1]], dtype=torch.float32)
    loss = model(g, l, SEEN, observed)
    loss.backward()
    for name in context:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_backbone.parameters())
    opt.step()
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # encoders bit-identical


@pytest.mark.parametrize("kind", ["coop", "dualcoop"])
@pytest.mark.parametrize("with_head", [False, True])
def test_saved_learner_scores_unseen_names_identically(tmp_path, tiny_backbone, kind, with_head):
    from sigrl.checkpoint import load_run, save_run
    from sigrl.modules.adapter import AdapterHead
    from sigrl.scorer import Scorer

    learner = _learner(kind, tiny_backbone)
    with torch.no_grad():  # a "trained" context: away from its start
        for p in learner.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    head = AdapterHead(64) if with_head else None
    run = save_run(tmp_path / "run", head=head, backbone=tiny_backbone, prompts=learner.prompts, labels=SEEN,
                   learner=learner)
    info = load_run(run).info
    assert info["prompt_learner"]["name"] == kind and info["n_ctx"] == 3
    assert (info["head_class"] is None) == (not with_head)
    g, l = _feats()
    with torch.no_grad():
        want = Scorer(learner, head)(g, l, UNSEEN)
        got = Scorer.from_run(run, backbone=tiny_backbone)(g, l, UNSEEN)
    assert torch.equal(got, want)
    loaded = Scorer.from_run(run, backbone=tiny_backbone)
    assert type(loaded.text) is type(learner) and not any(p.requires_grad for p in loaded.text.parameters())


def test_csc_refuses_unseen_names_where_it_scores(tmp_path, tiny_backbone):
    from sigrl.checkpoint import save_run
    from sigrl.config import load_config
    from sigrl.modules.prompt_learner import build_learner
    from sigrl.scorer import Scorer

    learner = _learner("csc", tiny_backbone)
    assert learner.context.shape == (3, 3, tiny_backbone.text_width)
    run = save_run(tmp_path / "run", head=None, backbone=tiny_backbone, prompts=learner.prompts, labels=SEEN,
                   learner=learner)
    scorer = Scorer.from_run(run, backbone=tiny_backbone)
    g, l = _feats()
    assert scorer(g, l, SEEN[::-1]).shape == (4, 3)  # any order of the seen labels
    with pytest.raises(UsageError, match="csc.*'purple ring'.*coop or dualcoop"):
        scorer(g, l, SEEN + UNSEEN[:1])
    cfg = load_config(None, ["prompts.learner=csc"])
    with pytest.raises(ConfigError, match="csc.*unseen"):
        build_learner(cfg, tiny_backbone, load_prompts("{}."), SEEN, zero_shot=True)


def test_csc_contexts_are_per_label(tiny_backbone):
    learner = _learner("csc", tiny_backbone)
    T = learner(SEEN)
    T.sum().backward()
    assert learner.context.grad.shape == learner.context.shape
    with torch.no_grad():
        learner.context[1] += torch.randn(learner.context[1].shape, generator=torch.Generator().manual_seed(2))
    T2 = learner(SEEN)
    assert torch.allclose(T[[0, 2]], T2[[0, 2]], atol=1e-6) and not torch.allclose(T[1], T2[1], atol=1e-3)


def test_dualcoop_probability_does_not_depend_on_other_labels(tiny_backbone):
    learner = _learner("dualcoop", tiny_backbone, negative_init="random")
    g, l = _feats()
    with torch.no_grad():
        alone = torch.sigmoid(learner.score(g, l, SEEN[:1]))
        crowd = torch.sigmoid(learner.score(g, l, UNSEEN + SEEN[:1] + ["a much longer label name than the rest"]))
    assert torch.allclose(alone[:, 0], crowd[:, len(UNSEEN)], atol=1e-6, rtol=0)
    assert learner.to_probabilities(torch.zeros(1)).item() == 0.5


def test_dualcoop_score_is_the_papers_formula():
    """Loops over images, labels and regions: a±_p = s cos(l_p, T±), w = softmax_p(a+),
    z± = λ Σ_p w_p a±_p; the label's probability is the softmax over {z-, z+} at +."""
    torch.manual_seed(0)
    B, P, C, D, s, lam = 2, 5, 3, 8, 20.0, 5.0
    L, Tp, Tn = torch.randn(B, P, D), torch.randn(C, D), torch.randn(C, D)
    got = torch.sigmoid(dualcoop_logits(L, Tp, Tn, spatial_scale=s, logit_scale=lam))
    for b in range(B):
        for c in range(C):
            a_pos, a_neg = [], []
            for p in range(P):
                lp = L[b, p] / L[b, p].norm()
                a_pos.append(s * float(lp @ (Tp[c] / Tp[c].norm())))
                a_neg.append(s * float(lp @ (Tn[c] / Tn[c].norm())))
            m = max(a_pos)
            e = [math.exp(a - m) for a in a_pos]
            w = [x / sum(e) for x in e]
            z_pos = lam * sum(wi * ai for wi, ai in zip(w, a_pos))
            z_neg = lam * sum(wi * ai for wi, ai in zip(w, a_neg))
            prob = math.exp(z_pos) / (math.exp(z_pos) + math.exp(z_neg))
            assert abs(float(got[b, c]) - prob) < 1e-5


def _asl_loop(z, y, gamma_pos, gamma_neg, m, unobserved):
    """ASL from the paper, entry by entry: L+ = (1-p)^g+ log p, L- = p_m^g- log(1-p_m),
    p_m = max(p - m, 0); loss = -(1/B) Σ_b Σ_c (y+ L+ + y- L-)."""
    B, C = z.shape
    total = z.new_zeros(())
    for b in range(B):
        for c in range(C):
            p = 1 / (1 + torch.exp(-z[b, c]))
            t = float(y[b, c])
            if t > 0:
                total = total + (1 - p) ** gamma_pos * torch.log(p)
            elif t < 0 or unobserved == "negative":
                pm = torch.clamp(p - m, min=0)
                total = total + pm ** gamma_neg * torch.log(1 - pm)
    return -total / B


@pytest.mark.parametrize("gamma_pos,gamma_neg,m,unobserved", [(0.0, 4.0, 0.05, "negative"), (1.0, 2.0, 0.05, "ignore"),
                                                              (0.0, 0.0, 0.0, "negative"), (2.0, 3.0, 0.2, "ignore")])
def test_asl_is_the_papers_formula(gamma_pos, gamma_neg, m, unobserved):
    from sigrl.losses.asl import AsymmetricLoss

    torch.manual_seed(0)
    z = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_()
    y = torch.tensor([[1, -1, 0, 0, -1, 1]] * 2 + [[0, 0, 1, -1, -1, 0]] * 2, dtype=torch.float64)
    want = _asl_loop(z, y, gamma_pos, gamma_neg, m, unobserved)
    (g_want,) = torch.autograd.grad(want, z)
    loss = AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=m, unobserved=unobserved)
    z2 = z.detach().float().requires_grad_()
    got = loss(z2, y.float())
    got.backward()
    assert abs(float(got) - float(want)) < 1e-4 * max(1.0, abs(float(want)))
    assert torch.allclose(z2.grad.double(), g_want, atol=1e-5)
    if m > 0:  # easy negatives (p < m) give no loss and no gradient
        easy = torch.full((1, 1), -10.0, requires_grad=True)
        out = loss(easy, -torch.ones(1, 1))
        out.backward()
        assert float(out) == 0.0 and float(easy.grad) == 0.0


def test_config_learner_choices_and_tune_alias(tiny_backbone):
    from sigrl.config import load_config
    from sigrl.modules.prompt_learner import build_learner, learner_name

    assert learner_name(load_config(None, ["prompts.tune=true"]).prompts) == "coop"
    with pytest.raises(ConfigError, match="prompts.tune"):
        load_config(None, ["prompts.tune=true", "prompts.learner=dualcoop"])
    with pytest.raises(ConfigError, match="prompts.learner"):
        load_config(None, ["prompts.learner=maple"])
    with pytest.raises(ConfigError, match="head.class=none.*nothing to learn"):
        load_config(None, ["head.class=none"])
    cfg = load_config(None, ["prompts.learner=dualcoop", "prompts.init=a photo of a", "prompts.negative_init=random",
                             "prompts.options.spatial_scale=10"])
    learner = build_learner(cfg, tiny_backbone, load_prompts("{}."), SEEN)
    assert isinstance(learner, DualCoOpPrompts) and learner.spatial_scale == 10.0
    assert learner.n_ctx == 4 and learner.negative_context.shape == (cfg.prompts.n_ctx, tiny_backbone.text_width)
    with pytest.raises(ConfigError, match="prompts.options"):
        build_learner(load_config(None, ["prompts.learner=coop", "prompts.options.bogus=1"]), tiny_backbone,
                      load_prompts("{}."), SEEN)


# ------------------------------------------------------------------ micro world
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A micro world + a quickly pre-trained tiny model in a private cache."""
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SIGRL_CACHE")
    os.environ["SIGRL_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SIGRL_CACHE", None)
    else:
        os.environ["SIGRL_CACHE"] = old


def _world_cfg(tmp, *overrides):
    from sigrl.config import load_config

    return load_config(None, ["data.format=world", "data.world.quick=true", "backbone.model=world",
                              "backbone.pretrain.quick=true", f"output={tmp / 'run'}", "train.batch_size=32",
                              "train.epochs=2", "eval.batch_size=64", "prompts.name={}.",
                              "prompts.init=a photo of a", *overrides])


@pytest.mark.parametrize("learner,loss,head,lr,extra", [
    ("coop", "ranking", "none", 2e-3, []),
    ("coop", "ranking", "sigrl", 2e-3, []),
    ("csc", "an", "none", 2e-3, ["data.all_labels=true", "data.observed=single_positive"]),
    # DualCoOp's logit is 100 x a cosine difference: a smaller step (Adam moves every
    # coordinate of the ~0.02-sized context vectors by about lr)
    ("dualcoop", "asl", "none", 2e-4, []),
    ("dualcoop", "asl", "none", 2e-4, ["data.all_labels=true", "data.observed=partial", "data.proportion=0.3",
                                       "loss.options.unobserved=ignore"]),
])
def test_each_learner_lowers_its_loss_on_a_micro_world(micro, tmp_path, learner, loss, head, lr, extra):
    from sigrl.experiment import features, part_dataset, prepare_experiment
    from sigrl.model import build_model

    cfg = _world_cfg(tmp_path, f"prompts.learner={learner}", f"loss.name={loss}", f"head.class={head}", *extra)
    exp = prepare_experiment(cfg, None, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg, exp)
    loader = torch.utils.data.DataLoader(part_dataset(exp.train, exp.backbone), batch_size=32, shuffle=False)
    batch = next(iter(loader))
    g, l = features(batch, exp.backbone)
    labels = list(exp.train.labels)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(6):
        loss_value = model(g, l, labels, batch["target"], index=batch["index"], epoch=0)
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        losses.append(loss_value.item())
    assert losses[-1] < losses[0] and max(losses[1:]) <= losses[0] * 1.05, losses


def test_train_prompts_alone_then_eval_and_tag(micro, tmp_path):
    """sigrl train with head.class=none + dualcoop: the run holds the two contexts and no
    head; sigrl eval of the run equals the trainer's best test metrics; the Tagger scores
    label names never trained on through the same scorer."""
    import json
    from pathlib import Path

    from sigrl.checkpoint import load_run
    from sigrl.evaluate import evaluate_run
    from sigrl.train import train

    cfg = _world_cfg(tmp_path, "prompts.learner=dualcoop", "loss.name=asl", "head.class=none", "train.lr=2e-4")
    res = train(cfg, progress=False)
    run = load_run(cfg.output)
    assert run.head is None and set(run.prompt_tensors) == {"prompt_context", "prompt_context_negative"}
    result = evaluate_run(cfg.output, progress=False, write=False)
    best = res.best_metrics
    for key, value in result["metrics"].items():
        assert value == pytest.approx(best[f"test/{key}"], abs=1e-9), key
    assert json.loads((Path(cfg.output) / "run.json").read_text())["prompt_learner"]["name"] == "dualcoop"


def test_dualcoop_with_a_head_accumulates_gradients_without_a_step(tiny_backbone):
    """Gradient accumulation (backward twice, no optimizer step between): each forward
    encodes afresh, and the head's logit is the head's plus DualCoOp's."""
    from sigrl.losses.asl import AsymmetricLoss
    from sigrl.model import TrainModule
    from sigrl.modules.adapter import AdapterHead

    learner = _learner("dualcoop", tiny_backbone, negative_init="random")
    head = AdapterHead(64, combine="l2")
    model = TrainModule(head, learner, AsymmetricLoss())
    g, l = _feats()
    observed = torch.tensor([[1, -1, 0]] * 4, dtype=torch.float32)
    for _ in range(2):
        model(g, l, SEEN, observed).backward()
    with torch.no_grad():
        want = head(g, l, learner(SEEN), label_names=SEEN) + learner.score(g, l, SEEN)
        assert torch.allclose(model(g, l, SEEN), want, atol=1e-5)


def test_tagger_serves_a_dualcoop_run_for_any_names(tmp_path, tiny_backbone, image_dir):
    """`sigrl tag --checkpoint RUN` / Tagger: each label's tag score is DualCoOp's own
    probability sigmoid(z+ - z-), the same with or without other labels."""
    from sigrl.checkpoint import save_run
    from sigrl.tagging import Tagger

    learner = _learner("dualcoop", tiny_backbone, negative_init="random")
    run = save_run(tmp_path / "run", head=None, backbone=tiny_backbone, prompts=learner.prompts, labels=SEEN,
                   learner=learner)
    few = {r.image: dict(r.tags) for r in Tagger(UNSEEN[:1], checkpoint=run, backbone=tiny_backbone).tag(
        [str(image_dir)], top_k=None)}
    many = {r.image: dict(r.tags) for r in Tagger(UNSEEN + SEEN, checkpoint=run, backbone=tiny_backbone).tag(
        [str(image_dir)], top_k=None)}
    assert few and few.keys() == many.keys()
    for image, tags in few.items():
        assert 0 < tags[UNSEEN[0]] < 1 and abs(tags[UNSEEN[0]] - many[image][UNSEEN[0]]) < 1e-6
    from sigrl.images import load_image

    image = sorted(few)[0]
    g, l = tiny_backbone.encode_images(tiny_backbone.preprocess(load_image(image)).unsqueeze(0))
    with torch.no_grad():
        want = torch.sigmoid(learner.score(g, l, UNSEEN[:1]))[0, 0].item()
    assert abs(few[image][UNSEEN[0]] - want) < 1e-5
