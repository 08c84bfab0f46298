"""SVFR against the formulas of docs/design.md §3, written here as plain loops, with
RANDOM weights (biases included): each of the three steps alone and the whole module.

Nothing here calls our SVFR code to make an expected value; the loops index one patch,
one label and one channel at a time, as the formulas read."""
from __future__ import annotations

import pytest
import torch

from sigrl.modules.svfr import SVFR, decouple, decouple_naive, interact, reconstruct, reconstruct_naive

torch.set_num_threads(1)
B, P, C, D = 2, 5, 3, 4


def _rand(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def loop_decouple(L, T, W1, b1):
    """F[b,c,k] = sum_p alpha[b,p,c,k] L[b,p,k], alpha = softmax over p of
    A[b,p,c,k] = sum_j W1[k,j] tanh(L[b,p,j] T[c,j]) + b1[k]."""
    Bn, Pn, Dn = L.shape
    Cn = T.shape[0]
    F = torch.zeros(Bn, Cn, Dn, dtype=L.dtype)
    for b in range(Bn):
        for c in range(Cn):
            for k in range(Dn):
                a = [sum(W1[k, j] * torch.tanh(L[b, p, j] * T[c, j]) for j in range(Dn)) + b1[k] for p in range(Pn)]
                e = [torch.exp(x - max(a)) for x in a]
                z = sum(e)
                F[b, c, k] = sum(e[p] / z * L[b, p, k] for p in range(Pn))
    return F


def loop_interact(F, T):
    """F'_b = F_b M_b, M_b[d,e] = r[d,e] / sqrt(sum_e' r[d,e']^2), r = relu(sum_c F[b,c,d] T[c,e] / (|F_b| |T|))."""
    Bn, Cn, Dn = F.shape
    out = torch.zeros_like(F)
    nt = torch.sqrt((T ** 2).sum())
    for b in range(Bn):
        nf = torch.sqrt((F[b] ** 2).sum())
        M = torch.zeros(Dn, Dn, dtype=F.dtype)
        for d in range(Dn):
            for e in range(Dn):
                M[d, e] = max(0.0, float(sum(F[b, c, d] * T[c, e] for c in range(Cn)) / (nf * nt)))
            norm = torch.sqrt((M[d] ** 2).sum())
            if norm > 0:
                M[d] = M[d] / norm
        for c in range(Cn):
            for e in range(Dn):
                out[b, c, e] = sum(F[b, c, d] * M[d, e] for d in range(Dn))
    return out


def loop_reconstruct(L, U, W3, b3):
    """R[b,p,k] = sum_c alpha2[b,p,c,k] L[b,p,k], alpha2 = softmax over p of
    A2[b,p,c,k] = sum_j W3[k,j] tanh(L[b,p,j] U[b,c,j]) + b3[k]."""
    Bn, Pn, Dn = L.shape
    Cn = U.shape[1]
    R = torch.zeros_like(L)
    for b in range(Bn):
        for c in range(Cn):
            for k in range(Dn):
                a = [sum(W3[k, j] * torch.tanh(L[b, p, j] * U[b, c, j]) for j in range(Dn)) + b3[k] for p in range(Pn)]
                e = [torch.exp(x - max(a)) for x in a]
                z = sum(e)
                for p in range(Pn):
                    R[b, p, k] += e[p] / z * L[b, p, k]
    return R


def loop_fuse(F2, T_g, W2):
    """U[b,c,k] = sum_j W2[k,j] H[b,c,j], H = [F'_bc ; T_g,c] (2D)."""
    Bn, Cn, Dn = F2.shape
    U = torch.zeros_like(F2)
    for b in range(Bn):
        for c in range(Cn):
            h = torch.cat([F2[b, c], T_g[c]])
            for k in range(Dn):
                U[b, c, k] = sum(W2[k, j] * h[j] for j in range(2 * Dn))
    return U


@pytest.fixture(scope="module")
def data():
    L = _rand(B, P, D, seed=1, scale=2.0)  # raw tokens: not unit norm
    T = torch.nn.functional.normalize(_rand(C, D, seed=2), dim=-1)
    T_g = _rand(C, D, seed=3)
    W1, b1 = _rand(D, D, seed=4), _rand(D, seed=5)
    W2 = _rand(D, 2 * D, seed=6)
    W3, b3 = _rand(D, D, seed=7), _rand(D, seed=8)
    return L, T, T_g, W1, b1, W2, W3, b3


def test_step1_decoupling_random_weights(data):
    L, T, _, W1, b1, *_ = data
    want = loop_decouple(L, T, W1, b1)
    torch.testing.assert_close(decouple_naive(L, T, W1, b1), want)
    torch.testing.assert_close(decouple(L, T, W1, b1, chunk_size=2), want)


def test_step2_interaction_random_features(data):
    L, T, *_ = data
    F = _rand(B, C, D, seed=11)
    want = loop_interact(F, T)
    torch.testing.assert_close(interact(F, T), want)
    assert not torch.allclose(want, F, atol=1e-3)  # the step is not the identity


def test_step2_batch_norm_of_the_reference_gives_the_same(data):
    """The reference divides by ||F|| of the whole batch tensor: a positive scalar that
    cancels in the row normalisation, so each image's result is unchanged."""
    _, T, *_ = data
    F = _rand(B, C, D, seed=12)
    whole = F.norm() * T.norm()
    M = torch.relu(torch.einsum("bcd,ce->bde", F, T) / whole)
    M = M / M.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(interact(F, T), torch.bmm(F, M))
    torch.testing.assert_close(interact(F[1:], T), interact(F, T)[1:])


def test_step3_reconstruction_random_weights(data):
    L, _, _, _, _, _, W3, b3 = data
    U = _rand(B, C, D, seed=13)
    want = loop_reconstruct(L, U, W3, b3)
    torch.testing.assert_close(reconstruct_naive(L, U, W3, b3), want)
    torch.testing.assert_close(reconstruct(L, U, W3, b3, chunk_size=2), want)


@pytest.mark.parametrize("naive", [False, True])
def test_whole_svfr_random_weights(data, naive):
    L, T, T_g, W1, b1, W2, W3, b3 = data
    F = loop_decouple(L, T, W1, b1)
    U = loop_fuse(loop_interact(F, T), T_g, W2)
    want_R = loop_reconstruct(L, U, W3, b3)
    svfr = SVFR(D, chunk_size=2, naive=naive).double()
    with torch.no_grad():
        svfr.decouple_proj.weight.copy_(W1)
        svfr.decouple_proj.bias.copy_(b1)
        svfr.fuse_proj.weight.copy_(W2)
        svfr.recon_proj.weight.copy_(W3)
        svfr.recon_proj.bias.copy_(b3)
    R, F_out = svfr(L, T, T_g)
    torch.testing.assert_close(F_out, F)
    torch.testing.assert_close(R, want_R)


def test_whole_svfr_gradients_match_autograd_of_the_formulas(data):
    """Gradients of the chunked module (hand-derived backward) against autograd through
    the formulas written with einsum here."""
    L, T, T_g, W1, b1, W2, W3, b3 = data

    def formulas(L, T, T_g, W1, W2, W3):
        A = torch.einsum("kj,bpcj->bpck", W1, torch.tanh(L[:, :, None, :] * T[None, None])) + b1
        F = (torch.softmax(A, dim=1) * L[:, :, None, :]).sum(1)
        r = torch.relu(torch.einsum("bcd,ce->bde", F, T))
        M = r / r.norm(dim=-1, keepdim=True)
        U = torch.einsum("kj,bcj->bck", W2, torch.cat([torch.einsum("bcd,bde->bce", F, M),
                                                       T_g.expand(L.shape[0], -1, -1)], dim=-1))
        A2 = torch.einsum("kj,bpcj->bpck", W3, torch.tanh(L[:, :, None, :] * U[:, None])) + b3
        return (torch.softmax(A2, dim=1) * L[:, :, None, :]).sum(2)

    leaves = [x.clone().requires_grad_(True) for x in (L, T, T_g, W1, W2, W3)]
    w = _rand(B, P, D, seed=21)
    want = torch.autograd.grad((formulas(*leaves) * w).sum(), leaves)
    svfr = SVFR(D, chunk_size=2).double()
    Lx, Tx, Tgx = (x.clone().requires_grad_(True) for x in (L, T, T_g))
    with torch.no_grad():
        svfr.decouple_proj.weight.copy_(W1)
        svfr.decouple_proj.bias.copy_(b1)
        svfr.fuse_proj.weight.copy_(W2)
        svfr.recon_proj.weight.copy_(W3)
        svfr.recon_proj.bias.copy_(b3)
    R, _ = svfr(Lx, Tx, Tgx)
    got = torch.autograd.grad((R * w).sum(), [Lx, Tx, Tgx, svfr.decouple_proj.weight, svfr.fuse_proj.weight,
                                              svfr.recon_proj.weight])
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_)
