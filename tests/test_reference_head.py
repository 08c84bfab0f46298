"""The reference score rule and the reference SigRL head, against the formulas written
here with loops / einsum (MVL-Lab/SigRL ``OV/models/clip_vit.py`` ``forward``):

    s_l[b,c] = mean of the top-16 over p of <L_bp, T_c>     L raw projected tokens
    s_g[b,c] = <g_b / |g_b|, T_c>
    score    = (s_l / ||s_l[b,:]||_2 + s_g / ||s_g[b,:]||_2) / 2
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as Fn

from sigrl.losses.ranking import RankingLoss
from sigrl.modules.head import SigRLHead
from sigrl.modules.matching import match_scores

torch.set_num_threads(1)
D = 6


def _data(B=3, P=20, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    glob = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    # raw tokens with very different norms per patch, so normalising them first would
    # pick other patches in the top-k
    loc = torch.randn(B, P, D, generator=g, dtype=torch.float64) * torch.rand(B, P, 1, generator=g,
                                                                               dtype=torch.float64) * 5
    T = Fn.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=-1)
    return glob, loc, T


def loop_topk_mean(tokens, T, k):
    B, P, _ = tokens.shape
    out = torch.zeros(B, T.shape[0], dtype=tokens.dtype)
    for b in range(B):
        for c in range(T.shape[0]):
            sims = sorted((float(tokens[b, p] @ T[c]) for p in range(P)), reverse=True)
            out[b, c] = sum(sims[: min(k, P)]) / min(k, P)
    return out


def loop_l2_rule(s_l, s_g):
    out = torch.zeros_like(s_l)
    for b in range(s_l.shape[0]):
        nl = sum(float(v) ** 2 for v in s_l[b]) ** 0.5
        ng = sum(float(v) ** 2 for v in s_g[b]) ** 0.5
        for c in range(s_l.shape[1]):
            out[b, c] = (s_l[b, c] / nl + s_g[b, c] / ng) / 2
    return out


def test_match_scores_reference_rule_is_the_default():
    g, L, T = _data()
    s_g = torch.einsum("bd,cd->bc", g / g.norm(dim=-1, keepdim=True), T)
    want = loop_l2_rule(loop_topk_mean(L, T, 16), s_g)
    torch.testing.assert_close(match_scores(g, L, T), want)
    torch.testing.assert_close(match_scores(g, L, T, top_k=16, combine="l2"), want)
    # the raw top-k differs from the top-k of normalised tokens on these inputs
    assert not torch.allclose(loop_topk_mean(L, T, 16), loop_topk_mean(Fn.normalize(L, dim=-1), T, 16))
    # one part alone: that part over its L2 norm
    g_only = match_scores(g, None, T, mode="global")
    torch.testing.assert_close(g_only, s_g / s_g.norm(dim=-1, keepdim=True))
    assert (match_scores(g, L, T).abs() <= 1 + 1e-12).all()


def test_match_scores_softmax_variant_normalises_tokens():
    g, L, T = _data()
    Ln = L / L.norm(dim=-1, keepdim=True)
    s_l = loop_topk_mean(Ln, T, 4)
    s_g = torch.einsum("bd,cd->bc", g / g.norm(dim=-1, keepdim=True), T)
    want = (torch.exp(s_l / 0.05) / torch.exp(s_l / 0.05).sum(-1, keepdim=True)
            + torch.exp(s_g / 0.05) / torch.exp(s_g / 0.05).sum(-1, keepdim=True)) / 2
    torch.testing.assert_close(match_scores(g, L, T, top_k=4, combine="softmax", tau=0.05), want)


def _reference_head(**kw):
    torch.manual_seed(0)
    head = SigRLHead(D, preset="reference", hidden=8, heads=4, top_k=16, **kw).double().eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in head.svfr.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return head


def test_reference_head_defaults_and_config():
    head = SigRLHead(D)
    assert head.preset == "reference" and head.combine == "l2" and head.graph == "complete"
    assert head.logit_scale == 1.0 and head.gmc_dropout == 0.3 and head.top_k == 16
    assert type(head.gmc).__name__ == "ReferenceGMC"
    cfg = json.loads(json.dumps(head.config))
    assert cfg["preset"] == "reference"
    twin = SigRLHead.from_config(cfg)
    twin.load_state_dict(head.state_dict())
    assert twin.config == head.config
    # a config written before presets existed is our variant
    old = {k: v for k, v in SigRLHead(D, preset="ours").config.items() if k not in ("preset", "gmc_dropout")}
    assert SigRLHead.from_config(old).preset == "ours"


def test_reference_head_forward_is_the_reference_formula():
    """Raw tokens into SVFR, raw R into the top-16, the L2 rule; T_g from the GMC."""
    head = _reference_head()
    g, L, T = _data()
    logits, ex = head(g, L, T, return_extras=True)
    T_g = head.gmc(T, head.label_graph(T))
    torch.testing.assert_close(ex["label_graph_feats"], T_g)
    R, _ = head.svfr(L, T, T_g)  # raw tokens in: the same R as the head used
    torch.testing.assert_close(ex["recon"], R)
    s_l = loop_topk_mean(R, T, 16)  # raw R . T, no normalisation of R
    s_g = torch.einsum("bd,cd->bc", g / g.norm(dim=-1, keepdim=True), T)
    torch.testing.assert_close(ex["local"], s_l)
    torch.testing.assert_close(ex["global"], s_g)
    torch.testing.assert_close(logits, loop_l2_rule(s_l, s_g))
    assert (logits.abs() <= 1 + 1e-12).all()
    # normalising tokens or R first would give other scores on these inputs
    Rn, _ = head.svfr(Fn.normalize(L, dim=-1), T, T_g)
    assert not torch.allclose(loop_topk_mean(Rn, T, 16), s_l)


def test_reference_head_bias_scale_and_training():
    g, L, T = _data(B=4, C=5, seed=3)
    head = _reference_head(logit_bias=0.5, logit_scale=3.0)
    logits, ex = head(g, L, T, return_extras=True)
    torch.testing.assert_close(logits, 3.0 * loop_l2_rule(ex["local"], ex["global"]) + 0.5)
    head = _reference_head(learn_logit_scale=True)
    head.train()
    targets = torch.tensor([[1, -1, -1, 0, -1], [-1, 1, -1, -1, 0], [0, -1, 1, -1, -1], [-1, -1, -1, 1, 1]])
    loss = RankingLoss()(head(g, L, T), targets)
    loss.backward()
    for name, p in head.named_parameters():
        if name.endswith(("decouple_proj.bias", "recon_proj.bias")):
            continue  # constant over p: cancels in the softmax over patches (zero gradient)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
