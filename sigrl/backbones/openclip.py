"""open_clip backbones: a model name or an open_clip-style JSON config, with weights from
an open_clip pretrained tag or a local checkpoint file.

    model="ViT-B-16", pretrained="openai"               # needs the hub (not on this machine)
    model="ViT-B-16", pretrained="/ckpt/vitb16.pt"      # any local open_clip checkpoint
    model="/runs/tiny/model.json", pretrained="/runs/tiny/model.safetensors"

A JSON config is either open_clip's model config (``{"embed_dim", "vision_cfg",
"text_cfg"}``, optionally with a top-level ``"preprocess_cfg"``) or open_clip's
``open_clip_config.json`` (``{"model_cfg": {...}, "preprocess_cfg": {...}}``).

Local tokens: with ``visual.output_tokens = True`` open_clip's ViT returns the patch
tokens after ``ln_post`` but *before* the projection; we multiply them by
``visual.proj`` so they live in the same joint space as the pooled class token, and
return them raw (not normalised; see :mod:`.base`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, UsageError
from .base import Backbone, PreprocessConfig, load_torch_checkpoint


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """Hex sha256 of a file (first ``limit`` bytes only when given), 16 chars."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()[:16]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (``weights_only=True``: a pickle
    that asks to run code is refused). Unwraps ``{"state_dict": ...}`` and ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as err:  # corrupt file, wrong format
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]})") from err
    else:
        sd = load_torch_checkpoint(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_model_json(path: Path) -> tuple[dict, dict]:
    """open_clip model JSON -> (model_cfg, preprocess_cfg)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UsageError(f"{path}: not a readable JSON model config ({type(err).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg", {}), dict):
        raise UsageError(f"{path}: a model config must be a JSON object (open_clip's model config format)")
    if "model_cfg" in raw:
        model_cfg, pre = dict(raw["model_cfg"]), dict(raw.get("preprocess_cfg", {}))
    else:
        model_cfg = dict(raw)
        pre = dict(model_cfg.pop("preprocess_cfg", {}) or {})
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise UsageError(f"{path}: model config lacks '{key}' (expected open_clip's model config format)")
    if not isinstance(model_cfg["vision_cfg"], dict) or not isinstance(model_cfg["text_cfg"], dict):
        raise UsageError(f"{path}: 'vision_cfg' and 'text_cfg' must be JSON objects")
    return model_cfg, pre


class OpenClipBackbone(Backbone):
    """A frozen open_clip CLIP model behind the :class:`Backbone` interface."""

    def __init__(self, model, tokenizer, spec: dict, preprocess_config: PreprocessConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.preprocess_config = preprocess_config
        visual = model.visual
        if not hasattr(visual, "output_tokens") or getattr(visual, "proj", None) is None:
            raise UsageError(f"{spec.get('model')}: only ViT image towers with a projection give local tokens")
        visual.output_tokens = True
        self.embed_dim = int(visual.proj.shape[1])
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
        self._custom_text = not hasattr(model, "token_embedding")
        self._transform = build_transform(preprocess_config)
        self.freeze()

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        return self._transform(image)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, H, W) -> global (B, D) L2-normalised, local (B, P, D) raw (the
        ``ln_post`` patch tokens times ``visual.proj``, not normalised)."""
        pooled, tokens = self.model.visual(pixels.to(self.device))
        local = tokens @ self.model.visual.proj
        return F.normalize(pooled.float(), dim=-1), local.float()

    # -- text -----------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def token_count(self, text: str) -> int:
        """Number of tokens ``text`` needs including start/end (to warn on truncation)."""
        encode = getattr(self.tokenizer, "encode", None)
        return len(encode(text)) + 2 if encode else 0

    def encode_tokens(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (N, L) -> (N, D) normalised. ``context`` (M, W), or (N, M, W) one per row:
        learnable vectors put after the start token (CoOp); the sequence is cut to
        ``context_length``."""
        m = self.model
        if self._custom_text:
            if context is not None:
                raise UsageError("prompt tuning needs an open_clip model with its own text transformer")
            return F.normalize(m.encode_text(tokens).float(), dim=-1)
        eot = tokens.argmax(dim=-1)  # end-of-text has the largest id
        x = m.token_embedding(tokens)
        if context is not None:
            ctx = context.to(x.dtype)  # (M, W) shared, or (N, M, W) one per row (class-specific)
            ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1) if ctx.dim() == 2 else ctx
            x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)[:, : self.context_length]
            eot = (eot + ctx.shape[1]).clamp(max=self.context_length - 1)
        n = x.shape[1]
        x = x + m.positional_embedding[:n].to(x.dtype)
        mask = m.attn_mask[:n, :n] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return F.normalize(x.float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        if not self._custom_text:
            return super().encode_texts(texts, batch_size)
        with torch.no_grad():  # HF text towers: no cut (their padding is not 0)
            outs = [self.encode_tokens(self.tokenize(texts[i : i + batch_size]).to(self.device))
                    for i in range(0, len(texts), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim)

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])


def build_transform(cfg: PreprocessConfig):
    """Resize the shorter side to ``resize_size``, centre-crop ``image_size``, normalise."""
    from torchvision import transforms as T

    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST}
    if cfg.interpolation not in modes:
        raise UsageError(f"interpolation must be one of {sorted(modes)}, got {cfg.interpolation!r}")
    return T.Compose([
        T.Resize(cfg.resize_size, interpolation=modes[cfg.interpolation]),
        T.CenterCrop(cfg.image_size),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])


def preprocess_from_open_clip(pre: dict, overrides: dict | None = None) -> PreprocessConfig:
    size = pre.get("size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    values = dict(image_size=size, resize_size=size, interpolation=pre.get("interpolation", "bicubic"))
    if "mean" in pre:
        values["mean"] = tuple(float(v) for v in pre["mean"])
    if "std" in pre:
        values["std"] = tuple(float(v) for v in pre["std"])
    values.update(overrides or {})
    if "mean" in values:
        values["mean"] = tuple(values["mean"])
    if "std" in values:
        values["std"] = tuple(values["std"])
    return PreprocessConfig(**values)


def load_open_clip(model: str, pretrained: str | None, *, device="cpu", preprocess: dict | None = None) -> OpenClipBackbone:
    """Build a frozen open_clip backbone (see module docstring for the accepted forms)."""
    import open_clip
    from open_clip.model import get_model_preprocess_cfg

    spec: dict = {"kind": "open_clip", "model": model, "pretrained": pretrained}
    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise UsageError(f"{path}: model config file not found")
        model_cfg, pre = read_model_json(path)
        spec["model"] = str(path.resolve())
        spec["config_sha256"] = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]
        cls = open_clip.CustomTextCLIP if ("hf_model_name" in model_cfg["text_cfg"] or model_cfg.get("custom_text")) else open_clip.CLIP
        cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
        try:
            net = cls(**cfg)
        except TypeError as err:
            raise UsageError(f"{path}: not a valid open_clip model config ({err})") from err
        if pretrained:
            sd = load_state_dict_file(pretrained)
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"{pretrained}: weights do not fit {path.name} ({str(err).splitlines()[0][:200]})") from err
        ctx = int(model_cfg["text_cfg"].get("context_length", 77))
        text_cfg = model_cfg["text_cfg"]
        if "hf_tokenizer_name" in text_cfg:
            tokenizer = open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=ctx)
        else:
            tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        pre = {"size": model_cfg["vision_cfg"].get("image_size", 224), **pre}
    else:
        if model not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if model.lower().replace("/", "-") in m.lower()][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see open_clip.list_models(), or pass a JSON config path)"
            raise UsageError(f"unknown open_clip model '{model}'{hint}")
        if pretrained and Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin") or (pretrained and Path(pretrained).is_file()):
            net = open_clip.create_model(model, pretrained=None)
            sd = load_state_dict_file(pretrained)
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"{pretrained}: weights do not fit {model} ({str(err).splitlines()[0][:200]})") from err
        else:
            try:
                net = open_clip.create_model(model, pretrained=pretrained or None)
            except Exception as err:
                raise CheckpointError(
                    f"cannot load weights '{pretrained}' for {model}: {str(err).splitlines()[0][:160]}. "
                    "Without network access pass a local checkpoint file: --pretrained PATH"
                ) from err
        tokenizer = open_clip.get_tokenizer(model)
        pre = get_model_preprocess_cfg(net)
    if pretrained and Path(pretrained).is_file():
        spec["checkpoint_sha256"] = file_sha256(pretrained)
        spec["pretrained"] = str(Path(pretrained).resolve())
    net = net.to(device)
    return OpenClipBackbone(net, tokenizer, spec, preprocess_from_open_clip(pre, preprocess))
