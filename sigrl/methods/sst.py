"""SST: structured semantic transfer — pseudo labels for unknown entries (partial labels).

Source: Chen et al., "Structured Semantic Transfer for Multi-Label Recognition with
Partial Labels", AAAI 2022 (code: github.com/HCPLab-SYSU/HCP-MLR-PL).

Two transfers, each turning unknown entries into positive pseudo labels:

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
    """SST label recovery (see module docstring for the math).

    Hyper-parameters: intra_threshold=0.95, cross_threshold=0.95, start_epoch=5,
    use_intra=True, use_cross=True, aggregate="max" ("max" | "mean"), min_support=1,
    normalize_prototype=False, chunk_size=4096 (rows per step; memory only).
    """

    name = "sst"

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
