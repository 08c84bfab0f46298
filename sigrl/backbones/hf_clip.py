"""Hugging Face transformers CLIP from a local directory (``CLIPModel.save_pretrained``).

Offline trap: ``CLIPTokenizer.from_pretrained(dir)`` with missing vocabulary files does
not fail, it returns a useless tokenizer with a couple of tokens. We check the vocabulary
size against the text model's and refuse clearly.

Local tokens: the vision transformer's patch tokens (``last_hidden_state[:, 1:]``) go
through the same ``post_layernorm`` and ``visual_projection`` as the class token, and are
returned raw (not normalised; see :mod:`.base`).

Hostile weights: a directory without ``*.safetensors`` is loaded from its
``pytorch_model*.bin`` files, which are pickles. Before ``transformers`` sees them, each
is opened here with ``torch.load(weights_only=True, mmap=True)``
(:func:`~sigrl.backbones.base.load_torch_checkpoint`; the tensors are not read), so a
pickle that asks for any global (``os.system``, a class) is refused with one line naming
the file, whatever ``transformers`` version is installed and without its advice to retry
with ``weights_only=False``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, UsageError
from .base import Backbone, PreprocessConfig, load_torch_checkpoint
from .openclip import build_transform, file_sha256


class HFClipBackbone(Backbone):
    def __init__(self, model, tokenizer, spec: dict, preprocess_config: PreprocessConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.preprocess_config = preprocess_config
        self.embed_dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self._transform = build_transform(preprocess_config)
        self.freeze()

    def preprocess(self, image) -> torch.Tensor:
        return self._transform(image)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vm = self.model.vision_model
        hidden = vm(pixel_values=pixels.to(self.device)).last_hidden_state  # (B, 1+P, W)
        normed = vm.post_layernorm(hidden)
        proj = self.model.visual_projection(normed)
        return F.normalize(proj[:, 0].float(), dim=-1), proj[:, 1:].float()  # local tokens raw

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.context_length, return_tensors="pt")["input_ids"]

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def encode_tokens(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise UsageError("prompt tuning is implemented for open_clip backbones only")
        out = self.model.text_model(input_ids=tokens.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                # padding="longest": the batch is cut to its longest prompt
                enc = self.tokenizer(list(texts[i : i + batch_size]), padding="longest", truncation=True,
                                     max_length=self.context_length, return_tensors="pt")
                out = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                            attention_mask=enc["attention_mask"].to(self.device))
                outs.append(F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1))
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim)


def load_hf_clip(directory: str | Path, *, device="cpu", preprocess: dict | None = None) -> HFClipBackbone:
    from transformers import CLIPModel, CLIPTokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise UsageError(f"{directory}: not a Hugging Face model directory (no config.json)")
    if not any(directory.glob("*.safetensors")):
        for path in sorted(directory.glob("*.bin")):
            load_torch_checkpoint(path, mmap=True)  # refuses a pickle that asks to run code
    try:
        model = CLIPModel.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{directory}: cannot load a CLIPModel ({str(err).splitlines()[0][:200]})") from err
    try:
        tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{directory}: cannot load the CLIP tokenizer ({str(err).splitlines()[0][:200]})") from err
    expected = model.config.text_config.vocab_size
    if len(tokenizer) < min(expected, 1000):
        raise CheckpointError(
            f"{directory}: tokenizer has only {len(tokenizer)} tokens but the text model expects {expected}; "
            "vocab.json/merges.txt are missing or wrong (put the model's tokenizer files in the directory)"
        )
    pre_values: dict = {}
    pp = directory / "preprocessor_config.json"
    size = model.config.vision_config.image_size
    pre_values.update(image_size=size, resize_size=size)
    if pp.is_file():
        try:
            cfg = json.loads(pp.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
            for key, name in (("image_mean", "mean"), ("image_std", "std")):
                if key in cfg:
                    values = tuple(float(v) for v in cfg[key])
                    if len(values) != 3:
                        raise ValueError(f"{key} needs 3 numbers, got {len(values)}")
                    pre_values[name] = values
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
            raise CheckpointError(f"{pp}: unusable preprocessor config ({str(err).splitlines()[0][:200]}); "
                                  "fix or delete it (the defaults are then used)") from None
    pre_values.update(preprocess or {})
    for k in ("mean", "std"):
        if k in pre_values:
            pre_values[k] = tuple(pre_values[k])
    spec = {"kind": "hf_clip", "model": str(directory.resolve()), "pretrained": None}
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if weights:
        spec["checkpoint_sha256"] = file_sha256(weights[0])
    return HFClipBackbone(model.to(device), tokenizer, spec, PreprocessConfig(**pre_values))
