"""The frozen vision-language backbone interface.

Everything above the backbone (tagging, feature cache, SigRL head, benchmarks) talks to
this small interface, so an open_clip model, a Hugging Face CLIP directory or the
embedded world's tiny model are interchangeable.

Data flow (docs/design.md §2)::

    PIL image --preprocess--> (3, H, W) --encode_images--> g (B, D), L (B, P, D)
    label text --prompts--> strings --encode_texts--> T (C, D)

All three outputs live in the joint embedding space of width ``D = embed_dim``. The
global embedding ``g`` and the text embeddings ``T`` are L2-normalised along the last
axis; the local tokens ``L`` are **raw**: the ViT patch tokens after the final layer norm
and the *same* visual projection as the class token, not normalised (the reference
SigRL/MKT code feeds ``x[:, 1:] @ proj`` as it is into SVFR and into the top-k). Every
consumer that wants cosines of patches normalises them itself (the heads' preset "ours",
``match_scores(combine="softmax")``). The feature cache stores exactly what
``encode_images`` returns (cache format version 2; version-1 caches held normalised
tokens and are rebuilt).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a tensor. Reference SigRL/MKT: resize 256 bicubic, centre
    crop 224, ImageNet mean/std; open_clip models default to their own CLIP values."""

    image_size: int = 224
    resize_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def to_dict(self) -> dict:
        return asdict(self)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A frozen CLIP-style model. Subclasses implement the ``_encode_*`` methods.

    Attributes:
        spec: dict naming the model exactly (kind, model, pretrained, checkpoint hash);
            stored in feature-cache manifests and run directories.
        embed_dim: D, the joint embedding width.
        context_length: the text encoder's maximum number of tokens.
        preprocess_config: a :class:`PreprocessConfig`.
    """

    spec: dict
    embed_dim: int
    context_length: int
    preprocess_config: PreprocessConfig

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":  # frozen: always eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Short stable hash of ``spec`` + preprocessing (cache keys, manifests)."""
        text = repr(sorted(self.spec.items())) + repr(sorted(self.preprocess_config.to_dict().items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        """PIL RGB image -> (3, H, W) float tensor."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels: (B, 3, H, W) -> (global (B, D) L2-normalised, local (B, P, D) raw
        projected patch tokens, not normalised), both float32."""
        raise NotImplementedError

    # -- text -----------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> (N, context_length) token ids, truncated to the context."""
        raise NotImplementedError

    def encode_tokens(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (N, L) ids, L <= context_length, already cut to the batch's longest
        prompt -> (N, D) L2-normalised. ``context``: optional learnable (M, W) vectors
        inserted after the start token (prompt tuning); gradients flow to it."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """texts -> (N, D) L2-normalised, no grad. Each batch is cut to its longest prompt
        (identical outputs under the causal mask, about 10x faster for short labels)."""
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = cut_to_longest(self.tokenize(texts[i : i + batch_size]))
                outs.append(self.encode_tokens(tokens.to(self.device)).float())
        if not outs:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(outs)


def cut_to_longest(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """(N, L) ids padded with ``pad_id`` -> (N, L') with L' the longest real prompt."""
    nonpad = (tokens != pad_id).any(dim=0)
    last = int(nonpad.nonzero().max()) + 1 if nonpad.any() else 1
    return tokens[:, :last]


def load_torch_checkpoint(path, *, mmap: bool = False):
    """A torch checkpoint file through :func:`sigrl.safeio.load_torch_weights_only`
    (``weights_only=True``), its errors as one-line :class:`CheckpointError` messages: a
    pickle that asks to run code is refused, without torch's advice to retry with
    ``weights_only=False``."""
    from pathlib import Path

    from ..errors import CheckpointError, DataError, UnsafeFileError
    from ..safeio import load_torch_weights_only

    path = Path(path)
    try:
        return load_torch_weights_only(path, mmap=mmap)
    except UnsafeFileError:
        raise CheckpointError(f"{path}: refused: the file asks to run code when loaded (only tensors are accepted); "
                              "use a .safetensors file or a plain state dict from a source you trust") from None
    except DataError as err:
        msg = str(err).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: cannot read checkpoint ({msg[:200]})") from None
