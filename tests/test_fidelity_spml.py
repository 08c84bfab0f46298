"""The incomplete-label methods computed as their reference code computes them, each
formula re-derived here in plain loops from the math (never by calling sigrl's helper twice):

* ROLE's estimator optimiser (Cole et al. ``train.py``): its own group, lr x 10, plain Adam;
* SST (HCP-MLR-PL ``loss/SST.py``, ``model/SST.py``, ``SST.py``): pair co-occurrence branch,
  exemplar memory, intra / inter pseudo labels, co-occurrence ASL, contrastive distance,
  the whole per-step loss and its gradients, the margin schedule;
* CLSL (Qingdandian/CLSL ``models/sarlp_clip.py``, ``lib/aslloss.py``): sharpened soft
  filling into the second head, masked-sum and mean ASL, value and gradients;
* the SST protocol's partial-label mask (HCP-MLR-PL ``datasets/voc2007.py``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sigrl.losses import build_loss


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ============================================================================ ROLE
def _role_loop(z: torch.Tensor, e: torch.Tensor, obs: torch.Tensor, k: float) -> torch.Tensor:
    """Cole et al. ``loss_role`` + ``compute_batch_loss``, written out entry by entry."""
    B, C = z.shape
    total = z.new_zeros(())
    p, q = torch.sigmoid(z), torch.sigmoid(e)
    for b in range(B):
        for c in range(C):
            pos1 = -torch.log(p[b, c]) if obs[b, c] == 1 else 0.0
            pos2 = -torch.log(q[b, c]) if obs[b, c] == 1 else 0.0
            qd, pd = q[b, c].detach(), p[b, c].detach()
            cross1 = qd * -torch.log(p[b, c]) + (1 - qd) * -torch.log(1 - p[b, c])
            cross2 = pd * -torch.log(q[b, c]) + (1 - pd) * -torch.log(1 - q[b, c])
            total = total + (0.5 * (pos1 + pos2) + 0.5 * (cross1 + cross2)) / (B * C)
    reg_p = (sum(p[b].sum() for b in range(B)) / B - k) ** 2 / C**2
    reg_q = (sum(q[b].sum() for b in range(B)) / B - k) ** 2 / C**2
    return total + 0.5 * (reg_p + reg_q)


def test_role_estimator_is_its_own_adam_group_at_ten_times_the_lr():
    torch.manual_seed(0)
    N, C, lr = 6, 4, 1e-3
    loss = build_loss("role", num_images=N, num_classes=C, expected_num_pos=1.5)
    groups = loss.param_groups(lr, 0.05)
    assert len(groups) == 1 and groups[0]["params"][0] is loss.label_logits
    assert groups[0]["lr"] == pytest.approx(10 * lr) and groups[0]["weight_decay"] == 0.0
    assert build_loss("role", num_images=N, num_classes=C, expected_num_pos=1.5,
                      lr_mult=3.0).param_groups(lr, 0.05)[0]["lr"] == pytest.approx(3 * lr)

    z = torch.randn(3, C, requires_grad=True)
    index = torch.tensor([0, 2, 4])
    obs = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    opt = torch.optim.AdamW([{"params": [z], "lr": lr, "weight_decay": 0.05}] + groups)
    value = loss(z, obs, index=index)
    before = loss.label_logits.detach().clone()  # after the observed-label initialisation
    e = before[index].clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    ref = _role_loop(z_ref, e, obs, 1.5)
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    ref.backward()
    value.backward()
    opt.step()
    # Adam's first step from the math: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected
    # m^ = g, v^ = g^2: delta = -lr' g / (|g| + eps), lr' = 10 lr; no decay; other rows keep still
    g = e.grad
    expected = before.clone()
    expected[index] = before[index] - 10 * lr * g / (g.abs() + 1e-8)
    assert torch.allclose(loss.label_logits.detach(), expected, atol=1e-6)
    moved = (loss.label_logits.detach() - before).abs()
    assert moved[index].max() > 5e-3 and moved[[1, 3, 5]].max() == 0


# ============================================================================ SST
def _pairs(C):
    return [(i, j) for i in range(C) for j in range(i + 1, C)]


def _cooc_loop(loss, F: torch.Tensor) -> torch.Tensor:
    """q[b, p] for pair p = (i < j), row-major: <w_p, W3 relu(W2 [W1 F_i + b1; W1 F_j + b1] + b2) + b3> + b_p."""
    W1, b1 = loss.intra_fc_1.weight, loss.intra_fc_1.bias
    W2, b2 = loss.intra_fc_2.weight, loss.intra_fc_2.bias
    W3, b3 = loss.intra_fc_3.weight, loss.intra_fc_3.bias
    w, bias = loss.intra_classifiers.weight, loss.intra_classifiers.bias
    B, C, _ = F.shape
    rows = []
    for b in range(B):
        row = []
        for p, (i, j) in enumerate(_pairs(C)):
            hi, hj = W1 @ F[b, i] + b1, W1 @ F[b, j] + b1
            z = W3 @ torch.relu(W2 @ torch.cat([hi, hj]) + b2) + b3
            row.append((w[p] * z).sum() + bias[p])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _bce_known_loop(z, t, margin=0.0):
    terms = []
    for b in range(z.shape[0]):
        for c in range(z.shape[1]):
            if t[b, c] > margin:
                terms.append(-torch.log(torch.sigmoid(z[b, c])))
            elif t[b, c] < -margin:
                terms.append(-torch.log(1 - torch.sigmoid(z[b, c])))
    return torch.stack(terms).mean() if terms else z.sum() * 0


def _asl_pairs_loop(q, obs, gneg=2.0, gpos=1.0, clip=0.05):
    B, C = obs.shape
    out = []
    for b in range(B):
        for p, (i, j) in enumerate(_pairs(C)):
            t = 1.0 if (obs[b, i] > 0 and obs[b, j] > 0) else 0.0
            pr = torch.sigmoid(q[b, p])
            pn = torch.clamp(1 - pr + clip, max=1)
            l = -(t * torch.log(pr.clamp(min=1e-8)) + (1 - t) * torch.log(pn.clamp(min=1e-8)))
            pt = pr * t + pn * (1 - t)
            out.append(l * (1 - pt) ** (gpos * t + gneg * (1 - t)))
    return torch.stack(out).mean()


def _distance_loop(F, obs):
    """Contrastive loss over image pairs a < b and classes; deterministic when each of the
    two non-positive kinds has at most 2 n+ members (then all of them + their n+ largest)."""
    B, C, _ = F.shape
    pp, pn, nn_ = [], [], []
    for a in range(B):
        for b in range(a + 1, B):
            for c in range(C):
                d = torch.dot(F[a, c], F[b, c]) / (F[a, c].norm() * F[b, c].norm())
                ya, yb = int(obs[a, c]), int(obs[b, c])
                if ya == 1 and yb == 1:
                    pp.append(1 - d)
                elif ya == -1 and yb == -1:
                    nn_.append(1 + d)
                elif ya != 0 and yb != 0:
                    pn.append(1 + d)
    n = len(pp)
    if n:
        for group in (pn, nn_):
            assert len(group) <= 2 * n, "the test must stay in the deterministic regime"
            group += sorted(group, key=float, reverse=True)[:n]
    kept = pp + pn + nn_
    return torch.stack(kept).mean()


def _sst(C=4, D=5, **kw):
    torch.manual_seed(1)
    opts = dict(num_classes=C, embed_dim=D, num_images=10, hidden_dim=3, out_dim=4, num_exemplars=3)
    opts.update(kw)
    return build_loss("sst", **opts)


def test_sst_cooccurrence_branch_and_its_asl():
    loss = _sst()
    F = torch.randn(3, 4, 5)
    q = loss.cooccurrence_logits(F)
    assert torch.allclose(q, _cooc_loop(loss, F), atol=1e-6)
    obs = torch.tensor([[1, 1, 0, -1], [1, 0, 1, 1], [0, -1, 1, 0]], dtype=torch.float32)
    assert float(loss.cooccurrence_loss(q, obs)) == pytest.approx(float(_asl_pairs_loop(q, obs)), rel=1e-6)


def test_sst_memory_and_pseudo_labels():
    C, D = 4, 5
    loss = _sst(C, D)
    F1, F2 = torch.randn(3, C, D), torch.randn(2, C, D)
    o1 = torch.tensor([[1, 0, 0, -1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)
    o2 = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    loss.update_memory(F1, o1)
    loss.update_memory(F2, o2)
    K = 3
    for c in range(C):  # newest first: batch 2's positives (in batch order), then batch 1's, then zeros
        slots = [F2[b, c] for b in range(2) if o2[b, c] == 1] + [F1[b, c] for b in range(3) if o1[b, c] == 1]
        slots = (slots + [torch.zeros(D)] * K)[:K]
        assert torch.allclose(loss.memory[c], torch.stack(slots))
    # inter: an unknown (b, c) becomes +1 when the mean cosine to the K slots (0 for an empty slot) >= m
    Fq = torch.randn(2, C, D)
    oq = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0]], dtype=torch.float32)
    m = 0.05
    inter = loss.inter_targets(Fq, oq, m)
    for b in range(2):
        for c in range(C):
            cos = [0.0 if float(s.norm()) == 0 else float(torch.dot(Fq[b, c], s) / (Fq[b, c].norm() * s.norm()))
                   for s in loss.memory[c]]
            want = float(oq[b, c]) if oq[b, c] != 0 else float(np.mean(cos) >= m)
            assert float(inter[b, c]) == want
    # intra: s_bj = sum over the image's known positives i of A[j, i] / #positives, A[j, j] = 1,
    # A[j, i] = sigmoid(q of the pair {i, j}); an unknown j >= m becomes +1
    q = torch.randn(2, C * (C - 1) // 2)
    oi = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    idx = {pair: p for p, pair in enumerate(_pairs(C))}
    for m in (0.3, 0.5, 0.7):
        intra = loss.intra_targets(q, oi, m)
        for b in range(2):
            pos = [i for i in range(C) if oi[b, i] == 1]
            for j in range(C):
                if oi[b, j] != 0:
                    assert float(intra[b, j]) == float(oi[b, j])
                    continue
                s = sum(1.0 if i == j else _sig(float(q[b, idx[(min(i, j), max(i, j))]])) for i in pos)
                s = min(max(s / max(len(pos), 1), -1.0), 1.0)
                assert float(intra[b, j]) == float(s >= m), (m, b, j, s)


def test_sst_distance_loss():
    torch.manual_seed(3)
    F = torch.randn(4, 3, 5)
    # positives shared by images (pos-pos pairs) and a few -1 entries (pos-neg, neg-neg pairs)
    obs = torch.tensor([[1, 1, -1], [1, 1, 0], [1, -1, 1], [0, 1, -1]], dtype=torch.float32)
    assert float(_sst(3, 5).distance_loss(F, obs)) == pytest.approx(float(_distance_loop(F, obs)), rel=1e-6)
    # no positive pair: every pos-neg / neg-neg pair is kept
    obs2 = torch.tensor([[1, -1, 0], [-1, -1, 0], [-1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    pn_nn = []
    for a in range(4):
        for b in range(a + 1, 4):
            for c in range(3):
                ya, yb = int(obs2[a, c]), int(obs2[b, c])
                if ya and yb and not (ya == 1 and yb == 1):
                    pn_nn.append(1 + float(torch.dot(F[a, c], F[b, c]) / (F[a, c].norm() * F[b, c].norm())))
    assert float(_sst(3, 5).distance_loss(F, obs2)) == pytest.approx(float(np.mean(pn_nn)), rel=1e-6)


def test_sst_margin_schedule():
    loss = _sst(generate_label_epoch=5)
    # the reference: after every epoch >= generateLabelEpoch, margin = max(0.75, margin - 0.025)
    m, seen = 0.95, []
    for epoch in range(20):
        seen.append(loss.margins(epoch))
        if epoch >= 5:
            m = max(0.75, m - 0.025)
        nxt = loss.margins(epoch + 1)
        assert nxt[0] == pytest.approx(m) and nxt[1] == pytest.approx(m)
    assert seen[0] == (0.95, 0.95) and seen[-1] == (pytest.approx(0.75), pytest.approx(0.75))


def test_sst_whole_step_value_and_gradients():
    """loss1 + intra BCE + inter BCE + 10 x co-occurrence ASL + 0.05 x distance, in a labelled
    epoch (memory updated before the inter targets, as SST.py's Train), vs the loops."""
    C, D = 4, 5
    loss = _sst(C, D, generate_label_epoch=0, intra_margin=0.5, inter_margin=0.0, margin_floor=0.0, num_exemplars=2)
    torch.manual_seed(5)
    z = torch.randn(3, C, requires_grad=True)
    F = torch.randn(3, C, D, requires_grad=True)
    obs = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)  # no -1: deterministic
    value = loss(z, obs, index=torch.tensor([0, 1, 2]), epoch=0, extras={"label_feats": F})
    value.backward()

    z2, F2 = z.detach().clone().requires_grad_(True), F.detach().clone().requires_grad_(True)
    q = _cooc_loop(loss, F2)
    # memory after this step: the batch's positives first, zeros after
    mem = []
    for c in range(C):
        slots = [F2[b, c].detach() for b in range(3) if obs[b, c] == 1] + [torch.zeros(D)] * 2
        mem.append(slots[:2])
    idx = {pair: p for p, pair in enumerate(_pairs(C))}
    intra, inter = obs.clone(), obs.clone()
    for b in range(3):
        pos = [i for i in range(C) if obs[b, i] == 1]
        for j in range(C):
            if obs[b, j] != 0:
                continue
            s = sum(1.0 if i == j else _sig(float(q[b, idx[(min(i, j), max(i, j))]])) for i in pos) / max(len(pos), 1)
            intra[b, j] = float(s >= 0.5)
            cos = [0.0 if float(s_.norm()) == 0 else float(torch.dot(F2[b, j], s_) / (F2[b, j].norm() * s_.norm()))
                   for s_ in mem[j]]
            inter[b, j] = float(np.mean(cos) >= 0.0)
    assert (intra != obs).any() and (inter != obs).any()  # both transfers label something here
    ref = (_bce_known_loop(z2, obs) + _bce_known_loop(z2, intra, 0.5) + _bce_known_loop(z2, inter, 0.0)
           + 10.0 * _asl_pairs_loop(q, obs) + 0.05 * _distance_loop(F2, obs))
    ref.backward()
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    assert torch.allclose(F.grad, F2.grad, atol=1e-6)
    assert loss.recovered[:3].sum() == int(((intra > 0) & (obs == 0) | (inter > 0) & (obs == 0)).sum())
    # before the labelled epochs only the BCE on known entries and the two auxiliary losses train
    late = _sst(C, D, generate_label_epoch=3)
    early = late(z2.detach(), obs, epoch=0, extras={"label_feats": F2.detach()})
    want = (_bce_known_loop(z2.detach(), obs) + 10.0 * _asl_pairs_loop(_cooc_loop(late, F2.detach()), obs)
            + 0.05 * _distance_loop(F2.detach(), obs))
    assert float(early) == pytest.approx(float(want), rel=1e-5)


# ============================================================================ CLSL
def _clsl_loop(z, z0, obs, gneg=2.0, gpos=0.0, eps=1e-5, scale=1000.0, aux=0.1):
    B, C = z.shape
    main, soft = z.new_zeros(()), z.new_zeros(())
    for b in range(B):
        s = float(z[b].max())
        for c in range(C):
            # main head on the known entries (ASL, MASK=True: a sum)
            if obs[b, c] != 0:
                t = 1.0 if obs[b, c] > 0 else 0.0
                p = torch.sigmoid(z[b, c])
                l = -(t * torch.log(p.clamp(min=eps)) + (1 - t) * torch.log((1 - p).clamp(min=eps)))
                pt = float(p) * t + (1 - float(p)) * (1 - t)
                main = main + l * (1 - pt) ** (gpos * t + gneg * (1 - t))
            # second head on the filled targets (known: 0/1, unknown: sigmoid(z * max z), no grad)
            t = (1.0 if obs[b, c] > 0 else 0.0) if obs[b, c] != 0 else _sig(float(z[b, c]) * s)
            p0 = torch.sigmoid(z0[b, c])
            l0 = -(t * torch.log(p0.clamp(min=eps)) + (1 - t) * torch.log((1 - p0).clamp(min=eps)))
            pt0 = float(p0) * t + (1 - float(p0)) * (1 - t)
            soft = soft + l0 * (1 - pt0) ** (gpos * t + gneg * (1 - t))
    return scale * main + aux * scale * soft / (B * C)


def test_clsl_step_value_and_gradients():
    torch.manual_seed(0)
    B, C, D = 3, 4, 6
    loss = build_loss("clsl", num_classes=C, embed_dim=D, num_images=5)
    z = torch.randn(B, C, requires_grad=True)
    F = torch.randn(B, C, D, requires_grad=True)
    obs = torch.tensor([[1, 0, -1, 0], [0, 0, 1, 0], [-1, 1, 0, 0]], dtype=torch.float32)
    value = loss(z, obs, index=torch.tensor([4, 0, 2]), extras={"label_feats": F})
    value.backward()
    z2, F2 = z.detach().clone().requires_grad_(True), F.detach().clone().requires_grad_(True)
    W, bvec = loss.aux_weight_vectors.detach().clone().requires_grad_(True), loss.aux_bias.detach().clone()
    z0 = torch.stack([torch.stack([(W[c] * F2[b, c]).sum() + bvec[c] for c in range(C)]) for b in range(B)])
    ref = _clsl_loop(z2, z0, obs)
    ref.backward()
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(z.grad, z2.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(F.grad, F2.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(loss.aux_weight_vectors.grad, W.grad, rtol=1e-4, atol=1e-4)
    # the soft labels of the unknown entries are kept per image (NaN where known)
    filled = loss.filled[torch.tensor([4, 0, 2])]
    for b in range(B):
        s = float(z[b].max())
        for c in range(C):
            if obs[b, c] != 0:
                assert math.isnan(float(filled[b, c]))
            else:
                assert float(filled[b, c]) == pytest.approx(_sig(float(z[b, c]) * s), rel=1e-6)
    assert torch.isnan(loss.filled[[1, 3]]).all()


# ============================================================================ partial labels
@pytest.mark.parametrize("p,seed", [(0.1, 0), (0.5, 0), (0.7, 3)])
def test_partial_mask_is_the_sst_protocols(p, seed):
    """HCP-MLR-PL ``changeLabelProportion``: np.random.seed(seed); mask = random(shape);
    mask[mask < p] = 1; mask[mask < 1] = 0; label = mask * labels."""
    from sigrl.data import observed as obs

    rng = np.random.default_rng(11)
    labels = np.where(rng.random((37, 9)) < 0.3, 1, -1).astype(np.int8)
    labels[0, :3] = 0  # unknown in the full labels stays unknown
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        mask = np.random.random(labels.shape)
        mask[mask < p] = 1
        mask[mask < 1] = 0
        want = (mask * labels).astype(np.int8)
    finally:
        np.random.set_state(state)
    got = obs.partial(labels, p, seed=seed, mode="sst")
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert np.array_equal(obs.make_observed(labels, "partial_sst", seed, p), want)


def test_sst_warm_up_ramp_in_the_first_epoch():
    """SST.py: in epoch 0 the co-occurrence and distance losses are scaled by
    batchIndex / len(train_loader) (0-based batch index); from epoch 1 on, fully."""
    C, D = 4, 5
    loss = _sst(C, D, steps_per_epoch=4)
    torch.manual_seed(2)
    z, F = torch.randn(3, C), torch.randn(3, C, D)
    obs = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)
    bce, aux = _bce_known_loop(z, obs), 10.0 * _asl_pairs_loop(_cooc_loop(loss, F), obs) + 0.05 * _distance_loop(F, obs)
    for step in range(4):
        value = loss(z, obs, epoch=0, extras={"label_feats": F})
        assert float(value) == pytest.approx(float(bce + step / 4 * aux), rel=1e-5)
    assert float(loss(z, obs, epoch=1, extras={"label_feats": F})) == pytest.approx(float(bce + aux), rel=1e-5)
    off = _sst(C, D, steps_per_epoch=4, ramp=False)
    assert float(off(z, obs, epoch=0, extras={"label_feats": F})) == pytest.approx(float(bce + aux), rel=1e-5)
