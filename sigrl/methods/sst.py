"""SST: structured semantic transfer — pseudo labels for unknown entries (partial labels).

Source: Chen et al., "Structured Semantic Transfer for Multi-Label Recognition with
Partial Labels", AAAI 2022 (code: github.com/HCPLab-SYSU/HCP-MLR-PL).

Two things live here:

* :class:`SSTLoss` (``loss.name: sst``) — the paper's method as its reference code trains
  it: a per-step loss with a learnt co-occurrence branch, an exemplar memory of 100
  class-specific features per class, intra/inter pseudo labels with a relaxing margin,
  and the intra co-occurrence and inter distance losses (its docstring has the math).
* :class:`StructuredSemanticTransfer` (``method.name: sst_counted``) — our variant, a
  label recovery between epochs, described below. It differs from the reference in
  every part: counted (not learnt) co-occurrence, max aggregation by default, the global
  feature against the mean of all known positives (not class-specific features against
  100 exemplars), and no co-occurrence or distance loss.

The variant's two transfers, each turning unknown entries into positive pseudo labels:

(a) intra-image (label co-occurrence). From the observed training labels,
        P(j | i) = #images with i = +1 and j = +1  /  #images with i = +1 and j known.
    An unknown j in an image whose known positives I give
        score_j = max_{i in I} P(j | i)       (``aggregate="max"``, default)
        score_j = mean_{i in I} P(j | i)      (``aggregate="mean"``, the reference's rule)
    at or above ``intra_threshold`` becomes positive. The paper learns the co-occurrence
    with a network supervised by the known pairs; we use the counted statistics, which
    are what that network is trained to predict.

(b) cross-image (feature similarity). For each class c, the images known positive for
    c give exemplar features e_n (the class-specific feature F[n, c] when features are
    (N, C, D), the global feature otherwise), L2-normalised. An unknown (n, c) scores
        mean over exemplars of cos(f_nc, e)  =  <f_nc / |f_nc|, m_c>,
    m_c the mean of the normalised exemplars (the reference's mean similarity to stored
    positives); with ``normalize_prototype=True`` it is cos(f_nc, m_c) instead. A score at
    or above ``cross_threshold`` makes the entry positive.

Observed labels are never changed, and SST produces no negative pseudo labels. Before
``start_epoch`` the observed labels are returned unchanged (the reference starts at
epoch 5 of 20, thresholds 0.95). The model's ``scores`` are not used by SST.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sigrl.errors import ConfigError
from sigrl.methods import LabelRecovery

__all__ = ["label_cooccurrence", "StructuredSemanticTransfer"]


def label_cooccurrence(observed: Tensor, min_support: int = 1) -> Tensor:
    """Conditional co-occurrence P[i, j] = P(j = +1 | i = +1, j known) from (N, C) labels.

    Pairs with fewer than ``min_support`` images where i = +1 and j is known get 0;
    the diagonal is 0.
    """
    pos = (observed > 0).float()
    known = (observed != 0).float()
    joint = pos.T @ pos  # [i, j] = #(i+, j+)
    support = pos.T @ known  # [i, j] = #(i+, j known)
    cond = torch.where(support >= max(int(min_support), 1), joint / support.clamp_min(1), torch.zeros_like(joint))
    cond.fill_diagonal_(0.0)
    return cond


class StructuredSemanticTransfer(LabelRecovery):
    """Our between-epoch SST variant, ``sst_counted`` (module docstring; the reference is
    :class:`SSTLoss`).

    Hyper-parameters: intra_threshold=0.95, cross_threshold=0.95, start_epoch=5,
    use_intra=True, use_cross=True, aggregate="max" ("max" | "mean"), min_support=1,
    normalize_prototype=False, chunk_size=4096 (rows per step; memory only).
    """

    name = "sst_counted"

    def __init__(
        self,
        intra_threshold: float = 0.95,
        cross_threshold: float = 0.95,
        start_epoch: int = 5,
        use_intra: bool = True,
        use_cross: bool = True,
        aggregate: str = "max",
        min_support: int = 1,
        normalize_prototype: bool = False,
        chunk_size: int = 4096,
    ):
        super().__init__()
        if aggregate not in ("max", "mean"):
            raise ConfigError(f"sst: aggregate must be one of: max, mean (got {aggregate!r})")
        if not (0.0 <= float(intra_threshold) <= 1.0):
            raise ConfigError(f"sst: intra_threshold must be in [0, 1], got {intra_threshold!r}")
        if not (-1.0 <= float(cross_threshold) <= 1.0):
            raise ConfigError(f"sst: cross_threshold must be in [-1, 1], got {cross_threshold!r}")
        if int(start_epoch) < 0 or int(min_support) < 1 or int(chunk_size) < 1:
            raise ConfigError("sst: start_epoch must be >= 0, min_support and chunk_size >= 1")
        self.intra_threshold, self.cross_threshold = float(intra_threshold), float(cross_threshold)
        self.start_epoch, self.use_intra, self.use_cross = int(start_epoch), bool(use_intra), bool(use_cross)
        self.aggregate, self.min_support = aggregate, int(min_support)
        self.normalize_prototype, self.chunk_size = bool(normalize_prototype), int(chunk_size)

    # ---------------------------------------------------------------- (a) intra-image
    def intra_scores(self, observed: Tensor) -> Tensor:
        """(N, C) co-occurrence score of every entry given the image's known positives."""
        cond = label_cooccurrence(observed, self.min_support)
        pos = (observed > 0).float()
        if self.aggregate == "mean":
            return (pos @ cond) / pos.sum(1, keepdim=True).clamp_min(1)
        out = torch.zeros_like(pos)
        for start in range(0, pos.shape[0], self.chunk_size):
            block = pos[start : start + self.chunk_size]  # (n, C)
            # max over known positives i of cond[i, j]; rows without positives give 0
            out[start : start + self.chunk_size] = (block.unsqueeze(2) * cond.unsqueeze(0)).amax(1)
        return out

    # ---------------------------------------------------------------- (b) cross-image
    def cross_scores(self, features: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C) similarity of every entry's feature to the class's known positives,
        and (C,) the number of known positives per class."""
        pos = (observed > 0).float()
        count = pos.sum(0)  # (C,)
        feats = F.normalize(features.float(), dim=-1)
        if feats.dim() == 2:  # global features (N, D)
            proto = (pos.T @ feats) / count.clamp_min(1).unsqueeze(1)  # (C, D)
            if self.normalize_prototype:
                proto = F.normalize(proto, dim=-1)
            return feats @ proto.T, count
        if feats.dim() != 3 or feats.shape[1] != observed.shape[1]:
            raise ValueError(f"sst: features must be (N, D) or (N, C, D), got {tuple(features.shape)}")
        proto = torch.einsum("nc,ncd->cd", pos, feats) / count.clamp_min(1).unsqueeze(1)
        if self.normalize_prototype:
            proto = F.normalize(proto, dim=-1)
        return torch.einsum("ncd,cd->nc", feats, proto), count

    @torch.no_grad()
    def update(self, epoch: int, scores: Tensor | None, features: Tensor | None, observed: Tensor) -> Tensor:
        if observed.dim() != 2:
            raise ValueError(f"sst: observed must be (N, C), got {tuple(observed.shape)}")
        targets = observed.float().clone()
        unknown = observed == 0
        intra = torch.zeros_like(unknown)
        cross = torch.zeros_like(unknown)
        if int(epoch) >= self.start_epoch:
            if self.use_intra:
                intra = unknown & (self.intra_scores(observed) >= self.intra_threshold)
            if self.use_cross:
                if features is None:
                    raise ValueError("sst: cross-image transfer needs features (N, D) or (N, C, D); or use_cross=False")
                if features.shape[0] != observed.shape[0]:
                    raise ValueError(f"sst: {features.shape[0]} feature rows for {observed.shape[0]} images")
                sim, count = self.cross_scores(features.to(observed.device), observed)
                has_support = (count >= self.min_support).unsqueeze(0)
                cross = unknown & has_support & (sim >= self.cross_threshold)
        recovered = intra | cross
        targets[recovered] = 1.0
        self.stats = {
            "intra": int(intra.sum()),
            "cross": int(cross.sum()),
            "recovered_pos": int(recovered.sum()),
            "recovered_neg": 0,
            "unknown": int(unknown.sum()),
        }
        return targets


# ============================================================================ the reference SST
def _pair_index(num_classes: int) -> tuple[Tensor, Tensor]:
    """Indices (i, j) of the C(C-1)/2 label pairs i < j, row-major (i = 0 first)."""
    i, j = torch.triu_indices(num_classes, num_classes, offset=1)
    return i, j


def gather_rows(t: Tensor) -> Tensor:
    """The rows of every process, in rank order (the global batch under Accelerate's
    split_batches); ``t`` itself with one process. Every process must pass the same shape."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    device, dtype = t.device, t.dtype
    t = t.detach().contiguous()
    if dtype == torch.bool:  # not every backend gathers bool
        t = t.to(torch.uint8)
    if dist.get_backend() == "nccl" and not t.is_cuda:
        t = t.cuda()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.cat(out).to(device=device, dtype=dtype)


def _known_bce(logits: Tensor, target: Tensor, margin: float = 0.0) -> Tensor:
    """BCE over the entries with target > margin (as positives) or target < -margin (as
    negatives), averaged over those entries; 0 when there are none."""
    pos, neg = target > margin, target < -margin
    per_entry = torch.where(pos, -F.logsigmoid(logits), -F.logsigmoid(-logits))
    chosen = pos | neg
    if not bool(chosen.any()):
        return logits.sum() * 0.0
    return per_entry[chosen].mean()


class _ElementWise(torch.nn.Module):
    """Per-row linear map: out[b, r] = <W_r, x[b, r]> + b_r  (x: (B, R, D)); uniform
    init in [-1/sqrt(D), 1/sqrt(D)]."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        bound = 1.0 / float(dim) ** 0.5
        self.weight = torch.nn.Parameter(torch.empty(rows, dim).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(rows).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.weight).sum(-1) + self.bias


class SSTLoss(torch.nn.Module):
    """SST as its reference code trains it: one loss per step, with learnt state.

    Source: Chen et al., "Structured Semantic Transfer for Multi-Label Recognition with
    Partial Labels", AAAI 2022; HCP-MLR-PL ``SST.py`` (training loop), ``loss/SST.py``
    (pseudo labels, losses), ``model/SST.py`` (co-occurrence branch, exemplar memory).
    Our re-derivation of the math (no code copied):

    Inputs per step: logits (B, C); observed y (B, C) in {+1, -1, 0}; the head's
    class-specific features F (B, C, D) (``extras["label_feats"]``; the reference uses its
    semantic-decoupling features).

    Co-occurrence branch (learnt, parameters of this loss): for each label pair i < j,
        h_c = W1 F_c + b1;   z_ij = W3 relu(W2 [h_i ; h_j] + b2) + b3;
        q_ij = <w_ij, z_ij> + b_ij        (one weight vector per pair),
    P_ij = sigmoid(q_ij) the predicted probability that i and j are both present.

    Exemplar memory M (C, K, D), a buffer, zeros at the start: each step, for every class
    c, the features F[b, c] (detached) of the batch images with y[b, c] = +1 are put in
    front and the first K kept (newest first).

    Pseudo labels (from epoch ``generate_label_epoch`` on), for unknown entries only:
        intra: s_bj = sum_i A_bji y+_bi / max(1, sum_i y+_bi),  A_bji = P_ij (i != j),
               A_bjj = 1; unknown j -> +1 if s_bj >= m_intra (else stays 0);
        inter: s_bc = mean over the K memory slots k of cos(F[b, c], M[c, k]);
               unknown c -> +1 if s_bc >= m_inter.
    Margins: m(e) = m0 up to epoch g = ``generate_label_epoch``, then
    max(floor, m0 - step * (e - g)): the reference's 0.95 lowered by 0.025 after each
    labelled epoch, down to 0.75.

    Loss = BCE(logits, y)                                     known entries, mean
         + w_intra_bce * BCE(logits, intra targets)           (labelled epochs)
         + w_inter_bce * BCE(logits, inter targets)           (labelled epochs)
         + w_cooc * ASL(q, t)   t_ij = [y_i = +1][y_j = +1], mean over B x pairs,
               ASL(q, t) = -(t log p + (1 - t) log p_neg) (1 - p_t)^(gamma_pos t + gamma_neg (1 - t)),
               p = sigmoid(q), p_neg = min(1, 1 - p + clip), p_t = t p + (1 - t) p_neg
               (logs of values clamped at 1e-8; every pair not both +1 counts as 0)
         + w_dist * contrastive(F, y): over image pairs a < b of the batch and classes c,
               d = cos(F[a, c], F[b, c]); both +1 -> 1 - d; one +1 and one -1 -> 1 + d;
               both -1 -> 1 + d; when there are n+ > 0 positive pairs, the other two
               kinds are each cut to a random min(n, 2 n+) of them plus their n+ largest;
               the mean of everything kept.
    Warm-up: in epoch 0 the co-occurrence and distance terms are multiplied by
    step / ramp_steps, step the 0-based batch index (the reference: batch index / batches
    per epoch). ``ramp_steps`` defaults to ``steps_per_epoch``, which the trainer passes
    (batches per epoch); with neither, no ramp; ``ramp=False`` switches it off.

    Hyper-parameters (reference defaults): num_classes, embed_dim (context);
    generate_label_epoch=5, intra_margin=0.95, inter_margin=0.95, margin_step=0.025,
    margin_floor=0.75, intra_bce_weight=1.0, inter_bce_weight=1.0, cooc_weight=10.0,
    distance_weight=0.05, num_exemplars=100, hidden_dim=512, out_dim=1024,
    gamma_neg=2.0, gamma_pos=1.0, clip=0.05, ramp=True, ramp_steps=None (steps_per_epoch,
    context); num_images (context, for the
    ``recovered`` buffer: the latest pseudo positives of every image, for inspection).
    """

    name = "sst"
    wants_extras = True

    def __init__(self, num_classes: int, embed_dim: int, num_images: int | None = None,
                 generate_label_epoch: int = 5, intra_margin: float = 0.95, inter_margin: float = 0.95,
                 margin_step: float = 0.025, margin_floor: float = 0.75, intra_bce_weight: float = 1.0,
                 inter_bce_weight: float = 1.0, cooc_weight: float = 10.0, distance_weight: float = 0.05,
                 num_exemplars: int = 100, hidden_dim: int = 512, out_dim: int = 1024,
                 gamma_neg: float = 2.0, gamma_pos: float = 1.0, clip: float = 0.05,
                 ramp: bool = True, ramp_steps: int | None = None, steps_per_epoch: int | None = None):
        super().__init__()
        c, d = int(num_classes), int(embed_dim)
        if c < 2 or d < 1:
            raise ConfigError(f"sst: needs num_classes >= 2 and embed_dim >= 1, got {num_classes}, {embed_dim}")
        for key, value in (("intra_margin", intra_margin), ("inter_margin", inter_margin),
                           ("margin_floor", margin_floor)):
            if not -1.0 <= float(value) <= 1.0:
                raise ConfigError(f"sst: {key} must be in [-1, 1], got {value!r}")
        for key, value in (("margin_step", margin_step), ("intra_bce_weight", intra_bce_weight),
                           ("inter_bce_weight", inter_bce_weight), ("cooc_weight", cooc_weight),
                           ("distance_weight", distance_weight), ("gamma_neg", gamma_neg),
                           ("gamma_pos", gamma_pos), ("clip", clip)):
            if not float(value) >= 0:
                raise ConfigError(f"sst: {key} must be >= 0, got {value!r}")
        if int(num_exemplars) < 1 or int(hidden_dim) < 1 or int(out_dim) < 1 or int(generate_label_epoch) < 0:
            raise ConfigError("sst: num_exemplars, hidden_dim, out_dim must be >= 1, generate_label_epoch >= 0")
        if ramp_steps is not None and int(ramp_steps) < 1:
            raise ConfigError(f"sst: ramp_steps must be >= 1 or null, got {ramp_steps!r}")
        self.num_classes, self.embed_dim = c, d
        self.generate_label_epoch = int(generate_label_epoch)
        self.intra_margin, self.inter_margin = float(intra_margin), float(inter_margin)
        self.margin_step, self.margin_floor = float(margin_step), float(margin_floor)
        self.intra_bce_weight, self.inter_bce_weight = float(intra_bce_weight), float(inter_bce_weight)
        self.cooc_weight, self.distance_weight = float(cooc_weight), float(distance_weight)
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        if ramp_steps is None and steps_per_epoch is not None:
            ramp_steps = max(1, int(steps_per_epoch))
        self.ramp_steps = None if (ramp_steps is None or not ramp) else int(ramp_steps)
        pairs = c * (c - 1) // 2
        self.intra_fc_1 = torch.nn.Linear(d, int(hidden_dim))
        self.intra_fc_2 = torch.nn.Linear(2 * int(hidden_dim), int(out_dim))
        self.intra_fc_3 = torch.nn.Linear(int(out_dim), int(out_dim))
        self.intra_classifiers = _ElementWise(pairs, int(out_dim))
        pi, pj = _pair_index(c)
        self.register_buffer("pair_i", pi, persistent=False)
        self.register_buffer("pair_j", pj, persistent=False)
        self.register_buffer("memory", torch.zeros(c, int(num_exemplars), d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("recovered", None if num_images is None else
                             torch.zeros(int(num_images), c, dtype=torch.bool))
        self.stats: dict[str, float] = {}

    # ------------------------------------------------------------------ pieces
    def margins(self, epoch: int) -> tuple[float, float]:
        """(intra, inter) margins used during ``epoch`` (0-based)."""
        n = int(epoch) - self.generate_label_epoch  # labelled epochs finished before this one
        if n <= 0:
            return self.intra_margin, self.inter_margin
        drop = self.margin_step * n
        return (max(self.margin_floor, self.intra_margin - drop), max(self.margin_floor, self.inter_margin - drop))

    def cooccurrence_logits(self, feats: Tensor) -> Tensor:
        """(B, C(C-1)/2) pair logits q_ij (pairs i < j, row-major) from F (B, C, D)."""
        h = self.intra_fc_1(feats)
        pair = torch.cat((h[:, self.pair_i], h[:, self.pair_j]), dim=-1)
        z = self.intra_fc_3(torch.relu(self.intra_fc_2(pair)))
        return self.intra_classifiers(z)

    @torch.no_grad()
    def update_memory(self, feats: Tensor, observed: Tensor) -> None:
        """Put the batch's positive class features in front of each class's memory (with
        several processes: the whole batch's, gathered in rank order, so every process
        keeps the memory one process would)."""
        feats = gather_rows(feats.detach()).to(self.memory.device, self.memory.dtype)
        observed = gather_rows(observed).to(self.memory.device)
        k = self.memory.shape[1]
        for c in range(self.num_classes):
            new = feats[observed[:, c] > 0, c]
            if new.shape[0]:
                self.memory[c] = torch.cat((new, self.memory[c]), dim=0)[:k]

    def intra_targets(self, pair_logits: Tensor, observed: Tensor, margin: float) -> Tensor:
        c = self.num_classes
        prob = torch.sigmoid(pair_logits.detach())
        A = torch.zeros(observed.shape[0], c, c, dtype=prob.dtype, device=prob.device)
        A[:, self.pair_i, self.pair_j] = prob
        A[:, self.pair_j, self.pair_i] = prob
        A = A + torch.eye(c, dtype=prob.dtype, device=prob.device)
        pos = (observed > 0).to(prob.dtype)
        score = (A @ pos.unsqueeze(-1)).squeeze(-1) / pos.sum(1, keepdim=True).clamp_min(1)
        new = (observed == 0) & (score.clamp(-1, 1) >= margin)
        return observed.to(prob.dtype) + new.to(prob.dtype)

    def inter_targets(self, feats: Tensor, observed: Tensor, margin: float) -> Tensor:
        f = F.normalize(feats.detach().float(), dim=-1, eps=1e-9)
        m = F.normalize(self.memory.float(), dim=-1, eps=1e-9)  # zero slots stay zero: cos 0
        score = torch.einsum("bcd,ckd->bck", f, m).mean(-1)
        new = (observed == 0) & (score >= margin)
        return observed.to(feats.dtype) + new.to(feats.dtype)

    def cooccurrence_loss(self, pair_logits: Tensor, observed: Tensor) -> Tensor:
        pos = observed > 0
        t = (pos[:, self.pair_i] & pos[:, self.pair_j]).to(pair_logits.dtype)
        p = torch.sigmoid(pair_logits)
        p_neg = (1 - p + self.clip).clamp(max=1) if self.clip > 0 else 1 - p
        eps = 1e-8
        loss = -(t * torch.log(p.clamp(min=eps)) + (1 - t) * torch.log(p_neg.clamp(min=eps)))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            p_t = p * t + p_neg * (1 - t)
            loss = loss * torch.pow(1 - p_t, self.gamma_pos * t + self.gamma_neg * (1 - t))
        return loss.mean()

    def distance_loss(self, feats: Tensor, observed: Tensor) -> Tensor:
        b = feats.shape[0]
        if b < 2:
            return feats.sum() * 0.0
        a_idx, b_idx = torch.triu_indices(b, b, offset=1, device=feats.device)
        ya, yb = observed[a_idx], observed[b_idx]
        d = F.cosine_similarity(feats[a_idx], feats[b_idx], dim=2, eps=1e-9)
        pp = (ya == 1) & (yb == 1)
        pn = ~pp & (ya != 0) & (yb != 0) & ~((ya == -1) & (yb == -1))
        nn_ = (ya == -1) & (yb == -1)
        pp_loss, pn_loss, nn_loss = (1 - d)[pp], (1 + d)[pn], (1 + d)[nn_]
        n = pp_loss.shape[0]
        if n:
            def cut(x):
                if x.shape[0] == 0:
                    return x
                rand = x[torch.randperm(x.shape[0], device=x.device)[: 2 * n]]
                return torch.cat((rand, x.sort(descending=True).values[:n]))
            nn_loss, pn_loss = cut(nn_loss), cut(pn_loss)
        kept = torch.cat((pp_loss, pn_loss, nn_loss))
        return kept.mean() if kept.numel() else feats.sum() * 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, logits: Tensor, observed: Tensor, *, index=None, epoch=None, extras=None) -> Tensor:
        feats = None if extras is None else extras.get("label_feats")
        if feats is None:
            raise ConfigError("loss sst needs the head's class-specific features (extras['label_feats'], "
                              "B x C x D): use a head with local features (head.class sigrl or adapter)")
        if logits.shape != observed.shape or feats.shape[:2] != logits.shape:
            raise ValueError(f"sst: logits {tuple(logits.shape)}, observed {tuple(observed.shape)} and "
                             f"features {tuple(feats.shape)} must agree on (B, C)")
        epoch = 0 if epoch is None else int(epoch)
        observed = observed.to(logits.device)
        feats = feats.float()
        pair_logits = self.cooccurrence_logits(feats)
        if self.training:
            self.update_memory(feats, observed)
        loss = _known_bce(logits, observed)
        intra_new = inter_new = torch.zeros_like(observed, dtype=torch.bool)
        if epoch >= self.generate_label_epoch:
            m_intra, m_inter = self.margins(epoch)
            intra = self.intra_targets(pair_logits, observed, m_intra)
            inter = self.inter_targets(feats, observed, m_inter)
            intra_new, inter_new = (intra > 0) & (observed == 0), (inter > 0) & (observed == 0)
            loss = loss + self.intra_bce_weight * _known_bce(logits, intra, m_intra)
            loss = loss + self.inter_bce_weight * _known_bce(logits, inter, m_inter)
        ramp = 1.0
        if epoch == 0 and self.ramp_steps is not None:
            ramp = min(1.0, int(self.steps) / self.ramp_steps)
        loss = loss + ramp * self.cooc_weight * self.cooccurrence_loss(pair_logits, observed)
        loss = loss + ramp * self.distance_weight * self.distance_loss(feats, observed)
        if self.training:
            self.steps += 1
            if self.recovered is not None and index is not None:
                rows = gather_rows(torch.as_tensor(index, device=logits.device).long())
                self.recovered[rows.to(self.recovered.device)] = \
                    gather_rows(intra_new | inter_new).to(self.recovered.device)
        self.stats = {"intra": int(intra_new.sum()), "inter": int(inter_new.sum())}
        return loss
