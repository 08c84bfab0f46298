import json
import math

import pytest
import torch
import torch.nn.functional as Fn

from sigrl.errors import ConfigError, DataError, UsageError
from sigrl.losses.ranking import RankingLoss
from sigrl.modules.adapter import AdapterHead
from sigrl.modules.head import SigRLHead
from sigrl.modules.matching import match_scores

torch.set_num_threads(1)
D = 8
NAMES = ["cat", "dog", "car", "tree", "sky", "road", "bus"]


def _feats(B=3, P=6, C=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    glob = Fn.normalize(torch.randn(B, D, generator=g, dtype=dtype), dim=-1)
    loc = Fn.normalize(torch.randn(B, P, D, generator=g, dtype=dtype), dim=-1)
    T = Fn.normalize(torch.randn(C, D, generator=g, dtype=dtype), dim=-1)
    return glob, loc, T


def _prior(n=len(NAMES), seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 6, (n, n), generator=g).float()
    counts = counts + counts.t()
    label_counts = torch.randint(3, 12, (n,), generator=g).float()
    return counts, label_counts


def _randomize(module, seed=0):
    """Non-trivial weights everywhere (the GMC's last map starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def _head(**kw):
    """Our variant unless a test names the preset (these tests pinned its behaviour;
    the reference preset is tested in tests/test_reference_head.py)."""
    kw.setdefault("preset", "ours")
    kw.setdefault("hidden", 4)
    kw.setdefault("heads", 2)
    kw.setdefault("top_k", 3)
    torch.manual_seed(0)
    return _randomize(SigRLHead(D, **kw))


@pytest.mark.parametrize("gnn", ["gcn", "gatv2"])
@pytest.mark.parametrize("graph", ["complete", "knn"])
def test_any_label_count_and_extras(gnn, graph):
    head = _head(gnn=gnn, graph=graph, knn=2)
    for C in (1, 5, 13):
        g, L, T = _feats(C=C)
        logits, ex = head(g, L, T, return_extras=True)
        assert logits.shape == (3, C)
        assert ex["label_feats"].shape == (3, C, D)
        assert ex["label_graph_feats"].shape == (C, D)
        assert ex["recon"].shape == (3, 6, D)
        assert ex["local"].shape == ex["global"].shape == (3, C)
        torch.testing.assert_close(logits.exp().sum(dim=1), torch.ones(3))
    assert not any(13 in t.shape for t in head.state_dict().values())


def test_logits_are_log_of_design_score():
    """exp(logits) = (softmax_C(s_l / tau) + softmax_C(s_g / tau)) / 2 on the reconstructed tokens."""
    head = _head(logit_scale=20.0)
    g, L, T = _feats()
    logits, ex = head(g, L, T, return_extras=True)
    want = match_scores(g, ex["recon"], T, top_k=3, combine="softmax", tau=1 / 20.0)
    torch.testing.assert_close(logits.exp(), want)
    # global part is the plain cosine <g, T_c>
    torch.testing.assert_close(ex["global"], g @ T.t())
    # local part, naive: mean of the top-3 patch cosines of R
    R = Fn.normalize(ex["recon"], dim=-1)
    naive = torch.stack([torch.stack([(R[b] @ T[c]).sort(descending=True).values[:3].mean()
                                      for c in range(T.shape[0])]) for b in range(3)])
    torch.testing.assert_close(ex["local"], naive)


def test_modes_and_mean_combine():
    g, L, T = _feats()
    head = _head(combine="mean", logit_scale=10.0)
    logits, ex = head(g, L, T, return_extras=True)
    torch.testing.assert_close(logits, 10.0 * (ex["local"] + ex["global"]) / 2)
    glob = _head(mode="global", logit_scale=10.0)
    torch.testing.assert_close(glob(g, None, T), torch.log_softmax(10.0 * g @ T.t(), dim=-1))
    loc = _head(mode="local", logit_scale=10.0)
    lg, ex = loc(g, L, T, return_extras=True)
    torch.testing.assert_close(lg, torch.log_softmax(10.0 * ex["local"], dim=-1))


def test_centered_combine_subtracts_each_images_mean_over_labels():
    g, L, T = _feats()
    head = _head(combine="centered", logit_scale=10.0)
    logits, ex = head(g, L, T, return_extras=True)
    C = T.shape[0]
    for b in range(g.shape[0]):
        for c in range(C):
            loc = ex["local"][b, c] - sum(ex["local"][b, j] for j in range(C)) / C
            glo = ex["global"][b, c] - sum(ex["global"][b, j] for j in range(C)) / C
            torch.testing.assert_close(logits[b, c], 10.0 * (loc + glo) / 2)
    # the rule removes each image's mean over its labels: every row of logits sums to zero
    assert torch.allclose(logits.sum(dim=1), torch.zeros(g.shape[0]), atol=1e-5)


def test_score_with_graph_uses_refined_labels():
    head = _head(score_with="graph")
    g, L, T = _feats()
    _, ex = head(g, L, T, return_extras=True)
    torch.testing.assert_close(ex["global"], g @ ex["label_graph_feats"].t())


def test_chunked_head_matches_naive_head_with_gradients():
    g, L, T = _feats(dtype=torch.float64)
    a = _head(chunk_size=2).double()
    b = SigRLHead(D, preset="ours", hidden=4, heads=2, top_k=3, naive=True).double()
    b.load_state_dict(a.state_dict())
    la, lb = a(g, L, T), b(g, L, T)
    torch.testing.assert_close(la, lb)
    w = torch.randn_like(la)
    for x, y in zip(torch.autograd.grad((la * w).sum(), list(a.parameters())),
                    torch.autograd.grad((lb * w).sum(), list(b.parameters()))):
        torch.testing.assert_close(x, y)


def test_images_are_independent():
    head = _head()
    g, L, T = _feats(B=4)
    full = head(g, L, T)
    torch.testing.assert_close(head(g[2:3], L[2:3], T), full[2:3])


@pytest.mark.parametrize("graph", ["complete", "knn", "cooc"])
def test_permuting_labels_permutes_logits(graph):
    head = _head(graph=graph, knn=2, gnn="gatv2")
    head.set_label_prior(NAMES[:5], *_prior(5))
    g, L, T = _feats(C=7)
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    names = NAMES  # "road" and "bus" are not in the prior: unseen labels
    out = head(g, L, T, label_names=names)
    out_p = head(g, L, T[perm], label_names=[names[i] for i in perm])
    torch.testing.assert_close(out_p, out[:, perm])


def test_config_round_trip_rebuilds_identical_head():
    head = _head(graph="cooc", gnn="gcn", knn=2, learn_logit_scale=True, chunk_size=3)
    head.set_label_prior(NAMES, *_prior())
    cfg = json.loads(json.dumps(head.config))  # JSON-able
    assert cfg["type"] == "SigRLHead" and cfg["label_prior_names"] == NAMES
    twin = SigRLHead.from_config(cfg)
    twin.load_state_dict(head.state_dict())
    assert cfg["preset"] == "ours" and cfg["combine"] == "softmax" and cfg["logit_scale"] == 100.0
    g, L, T = _feats(C=4)
    names = ["Dog", " sky", "bus", "unknown thing"]  # case/space-insensitive match
    torch.testing.assert_close(twin(g, L, T, label_names=names), head(g, L, T, label_names=names))
    # the only tensors sized by a label count are the prior's
    C_prior = len(NAMES)
    for key, t in head.state_dict().items():
        if C_prior in t.shape:
            assert key in ("prior_counts", "prior_label_counts")


def test_load_state_dict_takes_the_prior_size():
    head = _head(graph="cooc")
    head.set_label_prior(NAMES, *_prior())
    other = SigRLHead.from_config({**head.config, "label_prior_names": None})
    other.load_state_dict(head.state_dict())  # resizes the prior buffers
    assert other.prior_counts.shape == (7, 7)
    torch.testing.assert_close(other.prior_counts, head.prior_counts)


def test_head_without_prior_has_no_label_sized_state():
    head = SigRLHead(D, hidden=4, heads=2)
    assert "prior_counts" not in head.state_dict()
    json.dumps(head.config)


def test_label_prior_errors():
    head = _head(graph="cooc")
    g, L, T = _feats(C=3)
    with pytest.raises(UsageError, match="set_label_prior"):
        head(g, L, T, label_names=NAMES[:3])
    with pytest.raises(DataError):
        head.set_label_prior(["a", "A"], torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(DataError):
        head.set_label_prior(["a", "b"], torch.zeros(3, 3), torch.ones(2))
    with pytest.raises(DataError):
        head.set_label_prior(["a", "b"], -torch.ones(2, 2), torch.ones(2))
    head.set_label_prior(NAMES, *_prior())
    with pytest.raises(UsageError, match="label_names"):
        head(g, L, T)
    with pytest.raises(UsageError):
        head(g, L, T, label_names=NAMES[:2])


def test_input_and_config_errors():
    head = _head()
    g, L, T = _feats()
    with pytest.raises(UsageError):
        head(g[:, :4], L, T)
    with pytest.raises(UsageError):
        head(g, L[:2], T)
    with pytest.raises(UsageError):
        head(g, L, T[:0])
    with pytest.raises(UsageError):
        head(g, None, T)
    with pytest.raises(ConfigError):
        SigRLHead(D, graph="star")
    with pytest.raises(ConfigError):
        SigRLHead(D, gnn="gatv2", hidden=5, heads=2)
    with pytest.raises(ConfigError):
        SigRLHead.from_config({"type": "SigRLHead", "embed_dim": D, "colour": "red"})
    with pytest.raises(ConfigError):
        SigRLHead.from_config({"type": "Nope", "embed_dim": D})
    with pytest.raises(ConfigError):
        SigRLHead(D, preset="paper")
    with pytest.raises(ConfigError):
        SigRLHead(D, preset="reference", gnn="gcn")
    with pytest.raises(ConfigError):
        SigRLHead(D, preset="ours", gmc_dropout=0.3)


def test_ranking_loss_trains_the_head():
    """A few steps of the ranking loss raise positives above negatives on a tiny batch."""
    g, L, T = _feats(B=4, P=6, C=5, seed=1)
    targets = torch.tensor([[1, -1, -1, 0, -1], [-1, 1, -1, -1, 0], [0, -1, 1, -1, -1], [-1, -1, -1, 1, 1]])
    head = SigRLHead(D, preset="ours", hidden=4, heads=2, top_k=3, graph="knn", knn=2, mode="local",
                     learn_logit_scale=True)
    loss_fn = RankingLoss(margin=1.0)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first, gmc_grad = None, 0.0
    for _ in range(25):
        loss = loss_fn(head(g, L, T), targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        gmc_grad = max(gmc_grad, head.gmc.out_proj.weight.grad.abs().sum().item())  # default gnn="gatv2"
        opt.step()
    assert loss.item() < 0.5 * first
    assert all(p.grad is not None for p in head.svfr.parameters())
    assert gmc_grad > 0  # the graph branch learns through the reconstruction


# ------------------------------------------------------------------------- adapter
def test_untrained_adapter_is_clip_matching():
    g, L, T = _feats()
    head = AdapterHead(D, top_k=3, logit_scale=50.0)
    torch.testing.assert_close(head(g, L, T).exp(), match_scores(g, L, T, top_k=3, combine="softmax", tau=1 / 50.0))
    glob = AdapterHead(D, mode="global")
    torch.testing.assert_close(glob(g, None, T).exp(), match_scores(g, None, T, mode="global", combine="softmax"))
    # the reference rule: raw tokens (here of any norm), logits = the l2-combined score
    raw = L * torch.rand(L.shape[:2] + (1,), generator=torch.Generator().manual_seed(5)) * 4
    l2 = AdapterHead(D, top_k=3, combine="l2")
    assert l2.logit_scale == 1.0
    torch.testing.assert_close(l2(g, raw, T), match_scores(g, raw, T, top_k=3, combine="l2"))
    l2g = AdapterHead(D, combine="l2", mode="global")
    torch.testing.assert_close(l2g(g, None, T), match_scores(g, None, T, mode="global"))


def test_adapter_config_round_trip_and_training():
    head = _randomize(AdapterHead(D, hidden=6, top_k=3, shared=True, learn_logit_scale=True))
    cfg = json.loads(json.dumps(head.config))
    twin = AdapterHead.from_config(cfg)
    assert isinstance(twin, AdapterHead)
    twin.load_state_dict(head.state_dict())
    g, L, T = _feats(C=9)
    torch.testing.assert_close(twin(g, L, T), head(g, L, T))
    logits, ex = head(g, L, T, return_extras=True)
    assert ex["local_feats"].shape == L.shape and ex["global_feats"].shape == g.shape
    torch.testing.assert_close(ex["global_feats"].norm(dim=-1), torch.ones(3))
    RankingLoss()(logits, torch.tensor([[1, -1] + [0] * 7] * 3)).backward()
    assert head.global_adapter.fc1.weight.grad.abs().sum() > 0
    assert not any(9 in t.shape for t in head.state_dict().values())
    with pytest.raises(ConfigError):
        AdapterHead(D, dropout=1.5)
    with pytest.raises(UsageError):
        head(g, L, T[:, :3])


def test_lazy_top_level_export():
    import sigrl

    assert sigrl.SigRLHead is SigRLHead
    assert SigRLHead(D).preset == "reference" and math.isclose(SigRLHead(D).logit_scale, 1.0)
    assert math.isclose(SigRLHead(D, preset="ours").logit_scale, 100.0)


@pytest.mark.parametrize("cls", ["sigrl", "adapter"])
def test_logit_bias_shifts_every_logit_and_lets_bce_fit_a_positive(cls):
    g, L, T = _feats(C=5)
    make = (lambda **kw: _head(**kw)) if cls == "sigrl" else (lambda **kw: AdapterHead(D, top_k=3, **kw))
    plain, biased = make(), make(logit_bias=2.5)
    biased.load_state_dict(plain.state_dict(), strict=False)
    a, b = plain(g, L, T), biased(g, L, T)
    bias = float(biased.bias.bias)  # _head randomises every parameter, the bias too
    assert cls == "sigrl" or bias == 2.5
    torch.testing.assert_close(b - a, torch.full_like(a, bias))  # same rankings everywhere
    assert (a <= 0).all()  # softmax combine: log-probabilities, sigmoid <= 0.5 without a bias
    assert type(biased).from_config(json.loads(json.dumps(biased.config))).logit_bias == 2.5
    # BCE on one positive: with the bias the head's probability of it passes 0.5
    opt = torch.optim.Adam(biased.parameters(), lr=0.05)
    target = torch.zeros(3, 5)
    target[:, 0] = 1
    for _ in range(200):
        opt.zero_grad()
        Fn.binary_cross_entropy_with_logits(biased(g, L, T), target).backward()
        opt.step()
    assert (torch.sigmoid(biased(g, L, T))[:, 0] > 0.5).all()
    with pytest.raises(ConfigError):
        make(logit_bias=float("nan"))


def test_ablations_switch_off_svfr_and_the_graph():
    """ablate=["svfr"]: the local score is plain top-k patch matching of L (no reconstruction);
    ablate=["graph"]: the GMC weights no longer matter and SVFR gets T_g = T."""
    g, L, T = _feats(B=2, P=6, C=4, seed=3)
    head = _head(combine="mean", logit_scale=1.0, ablate=["svfr"])
    logits, ex = head(g, L, T, return_extras=True)
    Ln = Fn.normalize(L, dim=-1)
    want_local = torch.stack([torch.stack([(Ln[b] @ T[c]).topk(3).values.mean() for c in range(4)])
                              for b in range(2)])
    torch.testing.assert_close(ex["local"], want_local)
    torch.testing.assert_close(logits, (want_local + g @ T.t()) / 2)

    a = _head(ablate="graph")
    b = _head(ablate="graph")
    _randomize(b.gmc, seed=7)  # other GMC weights: no effect once the graph is off
    torch.testing.assert_close(a(g, L, T), b(g, L, T))
    R, _ = a.svfr(Ln, T, T)  # SVFR with T_g = T, by hand through its own inputs
    assert (a(g, L, T) - _head()(g, L, T)).abs().max() > 1e-4  # and it differs from the full head
    _, ex = a(g, L, T, return_extras=True)
    torch.testing.assert_close(ex["recon"], Fn.normalize(R, dim=-1))
    assert SigRLHead.from_config(json.loads(json.dumps(a.config))).ablate == ("graph",)
    with pytest.raises(ConfigError):
        _head(ablate=["gmc"])


@pytest.mark.parametrize("preset", ["ours", "reference"])
def test_svfr_input_scale_runs_svfr_on_scaled_tokens_and_scales_back(preset):
    """svfr_input_scale=s: R and F are SVFR(s * L', T, T_g) / s (L' = the preset's tokens);
    s = 1 is the plain head, and another s changes the scores (the tanh inputs grow)."""
    g, L, T = _feats(B=2, P=6, C=4, seed=5)
    L = L * 3.0  # raw tokens with a norm other than 1, so the reference preset's L' = L matters
    plain = _head(preset=preset).eval()  # eval: the reference GMC's dropout off
    scaled = _head(preset=preset, svfr_input_scale=4.0).eval()
    scaled.load_state_dict(plain.state_dict())
    _, ex = scaled(g, L, T, return_extras=True)
    Lp = Fn.normalize(L, dim=-1) if preset == "ours" else L
    T_g = ex["label_graph_feats"]
    R, F = plain.svfr(4.0 * Lp, T, T_g)
    torch.testing.assert_close(ex["label_feats"], F / 4.0)
    want_R = Fn.normalize(R, dim=-1) if preset == "ours" else R / 4.0
    torch.testing.assert_close(ex["recon"], want_R)
    assert (scaled(g, L, T) - plain(g, L, T)).abs().max() > 1e-4
    one = _head(preset=preset, svfr_input_scale=1).eval()
    one.load_state_dict(plain.state_dict())
    torch.testing.assert_close(one(g, L, T), plain(g, L, T), rtol=0, atol=0)
    assert SigRLHead.from_config(json.loads(json.dumps(scaled.config))).svfr_input_scale == 4.0
    for bad in (0, -1.0, True, "2"):
        with pytest.raises(ConfigError, match="svfr_input_scale must be a positive number"):
            _head(preset=preset, svfr_input_scale=bad)
