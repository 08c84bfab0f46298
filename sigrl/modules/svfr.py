"""SVFR: semantic visual feature reconstruction (SigRL, ICME 2025; docs/design.md §3).

Three steps turn the frozen patch tokens ``L`` of an image into reconstructed tokens
``R`` that carry the label semantics:

1. **Semantic decoupling** (label-specific visual features)::

       A[b,p,c,:] = W1 tanh(L[b,p,:] * T[c,:]) + b1          (* is the elementwise product)
       alpha      = softmax of A over the patches p           (per label c and channel)
       F[b,c,:]   = sum over p of alpha[b,p,c,:] * L[b,p,:]

2. **Interaction with the text**::

       M_b  = normalize_rows(relu(F_b^T T / (||F_b|| ||T||)))   (D x D, rows L2-normalised)
       F'_b = F_b M_b
       H    = [F' ; T_g]                                       (concatenated features, 2D)

3. **Reconstruction**::

       U          = W2 H                                        (no bias, 2D -> D)
       A2[b,p,c,:] = W3 tanh(L[b,p,:] * U[b,c,:]) + b3
       alpha2     = softmax of A2 over the patches p            (per label c and channel)
       R[b,p,:]   = sum over c of alpha2[b,p,c,:] * L[b,p,:]

Shapes:
    - local tokens ``L``: (B, P, D)
    - label embeddings ``T`` and graph-refined label embeddings ``T_g``: (C, D)
    - label-specific features ``F``, ``F'`` and ``U``: (B, C, D)
    - reconstructed tokens ``R``: (B, P, D)

**Memory.** Written as above, steps 1 and 3 hold B*P*C*D numbers at once (B=32, P=196,
C=925, D=512: 12 GB per tensor, several per step for autograd). The softmax runs over p
separately for every (label, channel), so the label axis splits into chunks with
identical results: step 1 fills ``F[:, chunk]`` chunk by chunk and step 3 accumulates
``S = sum over c of alpha2`` (then ``R = L * S``). The two custom autograd functions
below (:class:`_Decouple`, :class:`_Reconstruct`) keep only ``L``, ``T``/``U``, the
weights and the small result in memory and recompute each chunk in backward with
hand-derived gradients, so peak memory grows with ``chunk_size``, not with C.
``naive=True`` runs the plain formulas (:func:`decouple_naive`,
:func:`reconstruct_naive`) through autograd, the reference the tests compare against.

Cost: recomputation adds one (B*P*c, D) x (D, D) product per step and chunk in backward
(7 such products per training step instead of 5), partly paid back by never allocating
label-sized buffers. Measured with ``benchmarks/bench_head.py`` (whole head, forward +
backward, P=196, C=1006, D=512, one thread of a shared 2-core CPU; noisy): B=1 chunked
13.5 s CPU time and 0.12 GiB extra memory vs naive 12.3 s and 2.68 GiB; B=2 28.5 s /
0.13 GiB vs 25.9 s / 4.58 GiB; B=8 chunked 0.21 GiB, where naive would need about
19-21 GiB (more than that machine has).

Facts worth knowing (they follow from the formulas):
    - ``b1`` and ``b3`` are constant over p, so they cancel in the softmax over p: they
      never change the output and their gradients are zero. They are kept only so the
      layers read as written in the paper.
    - With L2 row normalisation, the positive scalar ``1 / (||F_b|| ||T||)`` also cancels
      in step 2 (except for rows that are all zero after the relu); it only keeps the
      numbers O(1).

Equal to the reference SigRL code (MVL-Lab/SigRL ``OV/models/SDA.py``, ``VFR.py`` and
step 2 inline in ``OV/models/clip_vit.py``), with two remarks:
    - Step 2 divides by **per-image** norms ``||F_b||`` (Frobenius norm of image b's
      (C, D) block); the reference divides by the norm of the whole batch tensor. Either
      is one positive scalar per image, which cancels in the row normalisation of M_b
      (relu and L2 row normalisation are positively homogeneous), so both give the same
      M_b and neither couples the images of a batch: an image's output never depends on
      the other images in its batch, in the reference too (tested).
    - Steps 1 and 3 are computed in label chunks with recomputation in backward (same
      values up to floating-point summation order).
The head decides what ``L`` is: raw projected patch tokens (preset "reference", as the
reference feeds ``x[:, 1:] @ proj``) or tokens normalised per patch (preset "ours").
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from sigrl.errors import UsageError

#: default work size per chunk, in numbers of one (B, P, chunk, D) tensor (16 MiB in float32)
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def auto_chunk_size(batch: int, patches: int, dim: int, budget: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Number of labels per chunk so that one (B, P, chunk, D) tensor has at most
    ``budget`` elements (at least 1)."""
    return max(1, int(budget) // max(1, batch * patches * dim))


# ----------------------------------------------------------------------------- naive
def decouple_naive(L: torch.Tensor, T: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor | None) -> torch.Tensor:
    """Step 1 written plainly (materialises (B, P, C, D)).

    L: (B, P, D), T: (C, D), W1: (D, D), b1: (D,) or None -> F: (B, C, D)."""
    A = Fn.linear(torch.tanh(L[:, :, None, :] * T[None, None, :, :]), W1, b1)  # (B, P, C, D)
    alpha = torch.softmax(A, dim=1)
    return (alpha * L[:, :, None, :]).sum(dim=1)


def reconstruct_naive(L: torch.Tensor, U: torch.Tensor, W3: torch.Tensor, b3: torch.Tensor | None) -> torch.Tensor:
    """Step 3 written plainly (materialises (B, P, C, D)).

    L: (B, P, D), U: (B, C, D), W3: (D, D), b3: (D,) or None -> R: (B, P, D)."""
    A2 = Fn.linear(torch.tanh(L[:, :, None, :] * U[:, None, :, :]), W3, b3)  # (B, P, C, D)
    alpha2 = torch.softmax(A2, dim=1)
    return (alpha2 * L[:, :, None, :]).sum(dim=2)


# --------------------------------------------------------------------------- chunked
def _chunk_forward(L, Vc, Wt):
    """Recompute one chunk. L: (B, P, D); Vc: (B, c, D) label-side features of the chunk;
    Wt: (D, D) the transposed weight. Returns (Y, alpha): ``tanh(L * Vc)`` and the softmax
    over p of ``Y W^T``, both (B, P, c, D). The bias is left out: it is constant over p,
    so it cancels in the softmax."""
    Y = L[:, :, None, :] * Vc[:, None, :, :]
    Y.tanh_()
    B, P, c, D = Y.shape
    A = (Y.view(-1, D) @ Wt).view(B, P, c, D)
    # softmax over p, in place
    A -= A.amax(dim=1, keepdim=True)
    A.exp_()
    A /= A.sum(dim=1, keepdim=True)
    return Y, A


def _chunk_backward(L, Vc, negW, Y, dA, need_L, need_V, need_W, grads):
    """Shared tail of both backward passes, given dA (the gradient w.r.t. the pre-softmax
    logits of one chunk, (B, P, c, D)) and ``negW = -W``. Accumulates dL and dW into
    ``grads = [dL, _, dW, _]`` and returns dVc (B, c, D) (or None when not needed).
    The bias gradient is exactly zero (the bias cancels in the softmax over p)."""
    D = Y.shape[-1]
    if need_W:
        grads[2] += dA.view(-1, D).t() @ Y.view(-1, D)
    if not (need_L or need_V):
        return None
    dX = (dA.view(-1, D) @ negW).view_as(Y)  # -(dA W)
    del dA
    dX *= Y.square_().sub_(1)  # times (Y^2 - 1) = -tanh'; Y is not needed any more
    if need_L:
        grads[0] += (dX * Vc[:, None, :, :]).sum(dim=2)
    if need_V:
        return (dX * L[:, :, None, :]).sum(dim=1)
    return None


class _Decouple(torch.autograd.Function):
    """Step 1 in label chunks. forward(L (B,P,D), T (C,D), W1 (D,D), b1 (D,)|None, chunk) -> F (B,C,D)."""

    @staticmethod
    def forward(ctx, L, T, W1, b1, chunk):
        B, P, D = L.shape
        C = T.shape[0]
        out = L.new_empty(B, C, D)
        W1t = W1.t()
        for s in range(0, C, chunk):
            sl = slice(s, min(C, s + chunk))
            _, alpha = _chunk_forward(L, T[sl].unsqueeze(0), W1t)
            out[:, sl] = alpha.mul_(L[:, :, None, :]).sum(dim=1)
        ctx.save_for_backward(L, T, W1, b1, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, dF):
        L, T, W1, b1, F = ctx.saved_tensors
        need_L, need_T, need_W, need_b = ctx.needs_input_grad[:4]
        need_b = need_b and b1 is not None
        C = T.shape[0]
        grads = [
            torch.zeros_like(L) if need_L else None,
            torch.zeros_like(T) if need_T else None,
            torch.zeros_like(W1) if need_W else None,
            torch.zeros_like(b1) if need_b else None,
        ]
        if not (need_L or need_T or need_W):
            return None, None, None, grads[3], None
        dF = dF.contiguous()
        W1t, negW1 = W1.t(), -W1
        for s in range(0, C, ctx.chunk):
            sl = slice(s, min(C, s + ctx.chunk))
            Tc = T[sl].unsqueeze(0)
            Y, alpha = _chunk_forward(L, Tc, W1t)
            aG = alpha.mul_(dF[:, None, sl, :])  # alpha * G, G = dF of the chunk (B, 1, c, D)
            if need_L:  # direct path of F = sum_p alpha * L
                grads[0] += aG.sum(dim=2)
            # softmax backward: dA = alpha * (dalpha - sum_p alpha dalpha), dalpha = G * L,
            # and sum_p alpha * G * L = G * F, so dA = alpha * G * (L - F).
            dA = L[:, :, None, :] - F[:, None, sl, :]
            dA *= aG
            del alpha, aG
            dTc = _chunk_backward(L, Tc, negW1, Y, dA, need_L, need_T, need_W, grads)
            if need_T:
                grads[1][sl] = dTc.sum(dim=0)
        return grads[0], grads[1], grads[2], grads[3], None


class _Reconstruct(torch.autograd.Function):
    """Step 3 in label chunks. forward(L (B,P,D), U (B,C,D), W3 (D,D), b3 (D,)|None, chunk) -> R (B,P,D)."""

    @staticmethod
    def forward(ctx, L, U, W3, b3, chunk):
        C = U.shape[1]
        S = torch.zeros_like(L)  # sum over c of alpha2
        W3t = W3.t()
        for s in range(0, C, chunk):
            sl = slice(s, min(C, s + chunk))
            _, alpha2 = _chunk_forward(L, U[:, sl], W3t)
            S += alpha2.sum(dim=2)
        ctx.save_for_backward(L, U, W3, b3, S)
        ctx.chunk = chunk
        return L * S

    @staticmethod
    def backward(ctx, dR):
        L, U, W3, b3, S = ctx.saved_tensors
        need_L, need_U, need_W, need_b = ctx.needs_input_grad[:4]
        need_b = need_b and b3 is not None
        if not (need_L or need_U or need_W):
            return None, None, None, torch.zeros_like(b3) if need_b else None, None
        C = U.shape[1]
        W3t, negW3 = W3.t(), -W3
        grads = [
            dR * S if need_L else None,  # direct path of R = L * S
            torch.zeros_like(U) if need_U else None,
            torch.zeros_like(W3) if need_W else None,
            torch.zeros_like(b3) if need_b else None,
        ]
        dS = (dR * L)[:, :, None, :]  # (B, P, 1, D), the same for every label
        for s in range(0, C, ctx.chunk):
            sl = slice(s, min(C, s + ctx.chunk))
            Uc = U[:, sl]
            Y, alpha2 = _chunk_forward(L, Uc, W3t)
            # softmax backward over p: dA2 = alpha2 * dS - alpha2 * (sum_p alpha2 * dS)
            dA = alpha2 * dS
            q = dA.sum(dim=1, keepdim=True)  # (B, 1, c, D)
            dA.addcmul_(alpha2, q, value=-1)
            del alpha2, q
            dUc = _chunk_backward(L, Uc, negW3, Y, dA, need_L, need_U, need_W, grads)
            if need_U:
                grads[1][:, sl] = dUc
        return grads[0], grads[1], grads[2], grads[3], None


def decouple(L, T, W1, b1=None, *, chunk_size: int | None = None) -> torch.Tensor:
    """Step 1 (semantic decoupling) in label chunks; same values as :func:`decouple_naive`.

    L: (B, P, D), T: (C, D) -> F: (B, C, D). ``chunk_size=None`` picks one from the shapes
    (:func:`auto_chunk_size`)."""
    B, P, D = L.shape
    chunk = chunk_size or auto_chunk_size(B, P, D)
    if torch.jit.is_tracing():  # ONNX export: plain formulas per chunk (no buffer sized by the traced batch)
        return torch.cat([decouple_naive(L, T[s:s + chunk], W1, b1) for s in range(0, T.shape[0], chunk)], dim=1)
    return _Decouple.apply(L, T, W1, b1, int(chunk))


def reconstruct(L, U, W3, b3=None, *, chunk_size: int | None = None) -> torch.Tensor:
    """Step 3 (reconstruction) in label chunks; same values as :func:`reconstruct_naive`.

    L: (B, P, D), U: (B, C, D) -> R: (B, P, D)."""
    B, P, D = L.shape
    chunk = chunk_size or auto_chunk_size(B, P, D)
    if torch.jit.is_tracing():  # ONNX export: plain formulas per chunk, summed over the chunks
        return sum(reconstruct_naive(L, U[:, s:s + chunk], W3, b3) for s in range(0, U.shape[1], chunk))
    return _Reconstruct.apply(L, U, W3, b3, int(chunk))


def interact(F: torch.Tensor, T: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Step 2 without the concatenation: ``F'_b = F_b M_b``.

    ``M_b = normalize_rows(relu(F_b^T T / (||F_b|| ||T||)))`` with Frobenius norms taken
    **per image** and rows L2-normalised. The reference divides by the norm of the whole
    batch tensor instead: a positive scalar that cancels in the row normalisation, so the
    result is the same. F: (B, C, D), T: (C, D) -> F': (B, C, D); M_b is (D, D)."""
    norm_f = F.flatten(1).norm(dim=1).clamp_min(eps)  # (B,)
    norm_t = T.norm().clamp_min(eps)
    M = torch.einsum("bcd,ce->bde", F, T) / (norm_f * norm_t)[:, None, None]  # (B, D, D)
    M = Fn.normalize(torch.relu(M), p=2, dim=-1, eps=eps)
    return torch.bmm(F, M)


class SVFR(nn.Module):
    """Semantic visual feature reconstruction: ``(L, T, T_g) -> (R, F)``.

    ``R = reconstruct(L, W2 [interact(F, T); T_g])`` with ``F = decouple(L, T)`` (the
    formulas are in the module docstring). No parameter depends on the number of labels.

    Args:
        embed_dim: D.
        chunk_size: labels per chunk in steps 1 and 3 (``None``: chosen from the shapes so
            that one (B, P, chunk, D) tensor holds at most 2**22 numbers).
        naive: compute steps 1 and 3 by the plain formulas (memory B*P*C*D; for tests).

    Parameters: ``W1`` (D, D) + ``b1`` (D,), ``W2`` (D, 2D), ``W3`` (D, D) + ``b3`` (D,).

    Shapes:
        - **input:** local tokens ``L`` (B, P, D), label embeddings ``T`` (C, D),
          graph-refined label embeddings ``T_g`` (C, D)
        - **output:** reconstructed tokens ``R`` (B, P, D), label-specific features
          ``F`` (B, C, D)
    """

    def __init__(self, embed_dim: int, *, chunk_size: int | None = None, naive: bool = False):
        super().__init__()
        if embed_dim < 1:
            raise UsageError(f"SVFR: embed_dim must be a positive integer, got {embed_dim}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise UsageError(f"SVFR: chunk_size must be a positive integer or None, got {chunk_size}")
        self.embed_dim = int(embed_dim)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.naive = bool(naive)
        self.decouple_proj = nn.Linear(embed_dim, embed_dim)  # W1, b1
        self.fuse_proj = nn.Linear(2 * embed_dim, embed_dim, bias=False)  # W2
        self.recon_proj = nn.Linear(embed_dim, embed_dim)  # W3, b3

    def label_features(self, L: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """Step 1 only: L (B, P, D), T (C, D) -> F (B, C, D)."""
        W, b = self.decouple_proj.weight, self.decouple_proj.bias
        if self.naive:
            return decouple_naive(L, T, W, b)
        return decouple(L, T, W, b, chunk_size=self.chunk_size)

    def forward(self, L: torch.Tensor, T: torch.Tensor, T_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if L.dim() != 3 or T.dim() != 2 or T_g.shape != T.shape or L.shape[-1] != T.shape[-1]:
            raise UsageError(
                f"SVFR: expected L (B, P, D), T (C, D), T_g (C, D) with one D; got "
                f"{tuple(L.shape)}, {tuple(T.shape)}, {tuple(T_g.shape)}"
            )
        F = self.label_features(L, T)
        F2 = interact(F, T)
        H = torch.cat([F2, T_g.unsqueeze(0).expand(F.shape[0], -1, -1)], dim=-1)  # (B, C, 2D)
        U = self.fuse_proj(H)
        W, b = self.recon_proj.weight, self.recon_proj.bias
        if self.naive:
            R = reconstruct_naive(L, U, W, b)
        else:
            R = reconstruct(L, U, W, b, chunk_size=self.chunk_size)
        return R, F
