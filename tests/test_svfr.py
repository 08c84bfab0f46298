import math

import pytest
import torch

from sigrl.errors import UsageError
from sigrl.modules.svfr import (
    SVFR,
    auto_chunk_size,
    decouple,
    decouple_naive,
    interact,
    reconstruct,
    reconstruct_naive,
)

torch.set_num_threads(1)
DT = torch.float64


def _inputs(B=2, P=5, C=7, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(B, P, D, generator=g, dtype=DT, requires_grad=True)
    T = torch.randn(C, D, generator=g, dtype=DT, requires_grad=True)
    U = torch.randn(B, C, D, generator=g, dtype=DT, requires_grad=True)
    W = torch.randn(D, D, generator=g, dtype=DT, requires_grad=True)
    b = torch.randn(D, generator=g, dtype=DT, requires_grad=True)
    return L, T, U, W, b


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_chunked_decouple_matches_naive_with_gradients(chunk):
    L, T, _, W, b = _inputs()
    out = decouple(L, T, W, b, chunk_size=chunk)
    ref = decouple_naive(L, T, W, b)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (L, T, W, b), g), torch.autograd.grad(ref, (L, T, W, b), g)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_chunked_reconstruct_matches_naive_with_gradients(chunk):
    L, _, U, W, b = _inputs()
    out = reconstruct(L, U, W, b, chunk_size=chunk)
    ref = reconstruct_naive(L, U, W, b)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (L, U, W, b), g), torch.autograd.grad(ref, (L, U, W, b), g)):
        torch.testing.assert_close(a, r)


def test_gradcheck_chunked_functions():
    L, T, U, W, b = _inputs(B=1, P=3, C=3, D=2)
    assert torch.autograd.gradcheck(lambda *a: decouple(*a, chunk_size=2), (L, T, W, b))
    assert torch.autograd.gradcheck(lambda *a: reconstruct(*a, chunk_size=2), (L, U, W, b))


def test_partial_requires_grad_and_no_bias():
    """Frozen L and T (the usual case): only the weights get gradients."""
    L, T, U, W, _ = _inputs()
    L, T = L.detach(), T.detach()
    out = decouple(L, T, W, None, chunk_size=3)
    torch.testing.assert_close(out, decouple_naive(L, T, W, None))
    (gw,) = torch.autograd.grad(out.sum(), (W,))
    (rw,) = torch.autograd.grad(decouple_naive(L, T, W, None).sum(), (W,))
    torch.testing.assert_close(gw, rw)
    out = reconstruct(L, U, W, None, chunk_size=2)
    gu, gw = torch.autograd.grad(out.pow(2).sum(), (U, W))
    ru, rw = torch.autograd.grad(reconstruct_naive(L, U, W, None).pow(2).sum(), (U, W))
    torch.testing.assert_close(gu, ru)
    torch.testing.assert_close(gw, rw)


def test_zero_weights_give_uniform_attention():
    """W = 0, b = 0: alpha = 1/P, so F[b, c] = mean over p of L[b] and R = L * C / P."""
    L, T, U, _, _ = _inputs(B=2, P=5, C=7, D=4)
    W = torch.zeros(4, 4, dtype=DT)
    F = decouple(L, T, W, None, chunk_size=3)
    torch.testing.assert_close(F, L.mean(dim=1, keepdim=True).expand(2, 7, 4))
    R = reconstruct(L, U, W, None, chunk_size=3)
    torch.testing.assert_close(R, L * 7 / 5)


def test_hand_worked_decouple():
    """P = 2 patches, one label, D = 1, W = 1, b = 0: alpha = softmax(tanh(l_p t))."""
    L = torch.tensor([[[1.0], [-2.0]]], dtype=DT)
    T = torch.tensor([[0.5]], dtype=DT)
    a1, a2 = math.tanh(0.5), math.tanh(-1.0)
    w1 = math.exp(a1) / (math.exp(a1) + math.exp(a2))
    want = w1 * 1.0 + (1 - w1) * -2.0
    got = decouple(L, T, torch.ones(1, 1, dtype=DT), None, chunk_size=1)
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_biases_cancel_in_the_softmax_over_patches():
    L, T, U, W, b = _inputs()
    torch.testing.assert_close(decouple(L, T, W, b), decouple(L, T, W, None))
    torch.testing.assert_close(reconstruct(L, U, W, b * 10), reconstruct(L, U, W, None))


def test_interact_hand_worked():
    # F_b = [[1, 2]], T = [[3, 0]]: F^T T = [[3, 0], [6, 0]] -> rows normalised [[1, 0], [1, 0]]
    # F' = [1, 2] @ M = [3, 0]
    F = torch.tensor([[[1.0, 2.0]]], dtype=DT)
    T = torch.tensor([[3.0, 0.0]], dtype=DT)
    torch.testing.assert_close(interact(F, T), torch.tensor([[[3.0, 0.0]]], dtype=DT))
    # F = [[1, -1]], T = [[1, 1]]: F^T T = [[1, 1], [-1, -1]] -> relu -> rows [[s, s], [0, 0]], s = 1/sqrt 2
    F = torch.tensor([[[1.0, -1.0]]], dtype=DT)
    T = torch.tensor([[1.0, 1.0]], dtype=DT)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(interact(F, T), torch.tensor([[[s, s]]], dtype=DT))


def test_interact_is_per_image():
    F = torch.randn(3, 4, 5, dtype=DT)
    T = torch.randn(4, 5, dtype=DT)
    both = interact(F, T)
    scaled = F.clone()
    scaled[1] *= 1000.0  # another image's scale must not matter
    torch.testing.assert_close(interact(scaled, T)[0], both[0])
    torch.testing.assert_close(interact(F[2:], T)[0], both[2])


def _module_pair(D=4, chunk=3):
    torch.manual_seed(0)
    a = SVFR(D, chunk_size=chunk).double()
    b = SVFR(D, naive=True).double()
    b.load_state_dict(a.state_dict())
    return a, b


def test_svfr_module_chunked_matches_naive_all_gradients():
    a, b = _module_pair()
    L, T, _, _, _ = _inputs()
    T_g = torch.randn(7, 4, dtype=DT, requires_grad=True)
    (Ra, Fa), (Rb, Fb) = a(L, T, T_g), b(L, T, T_g)
    torch.testing.assert_close(Ra, Rb)
    torch.testing.assert_close(Fa, Fb)
    g = torch.randn_like(Ra)
    ins_a = [L, T, T_g, *a.parameters()]
    ins_b = [L, T, T_g, *b.parameters()]
    loss_a = (Ra * g).sum() + Fa.pow(2).sum()
    loss_b = (Rb * g).sum() + Fb.pow(2).sum()
    for x, y in zip(torch.autograd.grad(loss_a, ins_a), torch.autograd.grad(loss_b, ins_b)):
        torch.testing.assert_close(x, y)


def test_svfr_images_are_independent():
    a, _ = _module_pair()
    L, T, _, _, _ = _inputs(B=3)
    T_g = torch.randn(7, 4, dtype=DT)
    R, F = a(L, T, T_g)
    R1, F1 = a(L[1:2], T, T_g)
    torch.testing.assert_close(R1[0], R[1])
    torch.testing.assert_close(F1[0], F[1])


def test_chunked_saves_no_label_sized_activation():
    """What autograd keeps for backward must not grow with C (only inputs and small outputs)."""
    B, P, C, D = 2, 6, 40, 8
    m = SVFR(D, chunk_size=4)
    L = torch.randn(B, P, D)
    T = torch.randn(C, D)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        R, F = m(L, T, torch.randn(C, D))
    assert max(sizes) <= B * C * D * 2  # F, U, H: (B, C, D) or (B, C, 2D)
    assert max(sizes) < B * P * C * D
    (R.sum() + F.sum()).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_auto_chunk_size_and_errors():
    assert auto_chunk_size(8, 196, 512) == (1 << 22) // (8 * 196 * 512)
    assert auto_chunk_size(10**6, 196, 512) == 1
    with pytest.raises(UsageError):
        SVFR(4, chunk_size=0)
    with pytest.raises(UsageError):
        SVFR(4)(torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(6, 4))


def test_traced_svfr_runs_the_plain_formulas_at_any_batch():
    """Under torch.jit.trace (the ONNX export) steps 1 and 3 take the per-chunk plain
    formulas; the graph traced at B=2 must give the naive SVFR's values at B=3 (a buffer
    sized by the traced batch, or a chunk lost or doubled, would not)."""
    a, b = _module_pair(D=4, chunk=3)  # C=7: chunks of 3, 3 and 1
    g = torch.Generator().manual_seed(5)
    T = torch.randn(7, 4, generator=g, dtype=DT)
    T_g = torch.randn(7, 4, generator=g, dtype=DT)
    L2 = torch.randn(2, 5, 4, generator=g, dtype=DT)
    L3 = torch.randn(3, 5, 4, generator=g, dtype=DT)
    class Fixed(torch.nn.Module):  # the labels as constants, as export.ScoreGraph has them
        def __init__(self):
            super().__init__()
            self.svfr = a

        def forward(self, L):
            return self.svfr(L, T, T_g)

    with torch.no_grad():
        traced = torch.jit.trace(Fixed(), (L2,), check_trace=False)
        R, F = traced(L3)
        Rb, Fb = b(L3, T, T_g)
    torch.testing.assert_close(R, Rb)
    torch.testing.assert_close(F, Fb)
