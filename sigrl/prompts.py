"""Prompt templates and label embeddings.

A prompt set is a text file with one template per line, ``{}`` standing for the label
(``#`` starts a comment). Files live in the package's ``assets/prompts/`` folder and are
selected by name (``scene``, ``photo``, ``ensemble``, ``bare``) or by path. With several
templates (an ensemble) each template's label embeddings are L2-normalised, averaged,
and normalised again:

    T[c] = normalize( mean_t normalize( text_encoder(template_t.format(label_c)) ) )   (C, D)

Label embeddings are cached in memory by (backbone fingerprint, prompt set, label), so a
label typed twice, or the seen labels re-used every epoch, are encoded once.
"""
from __future__ import annotations

import hashlib
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UsageError
from .paths import PROMPTS_DIR

DEFAULT_PROMPTS = "photo"


def prompt_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SIGRL_PROMPTS_DIR"):
        dirs.append(Path(os.environ["SIGRL_PROMPTS_DIR"]))
    dirs.append(PROMPTS_DIR)
    return dirs


def available_prompt_sets() -> list[str]:
    return sorted({p.stem for d in prompt_dirs() if d.is_dir() for p in d.glob("*.txt")})


@dataclass(frozen=True)
class PromptSet:
    """Named list of templates, each containing ``{}`` once."""

    name: str
    templates: tuple[str, ...]

    @property
    def key(self) -> str:
        return hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:12]

    def format(self, label: str) -> list[str]:
        return [t.replace("{}", label) for t in self.templates]

    def to_dict(self) -> dict:
        return {"name": self.name, "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSet":
        return cls(d["name"], tuple(d["templates"]))


def parse_templates(text: str, source: str) -> tuple[str, ...]:
    out = []
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1:
            raise UsageError(f"{source}:{n}: a template needs exactly one '{{}}' for the label, got {line!r}")
        out.append(line)
    if not out:
        raise UsageError(f"{source}: no templates (one per line, '{{}}' for the label)")
    return tuple(out)


def load_prompts(name_or_path: str | PromptSet | None = None) -> PromptSet:
    """A prompt set by name (file stem in ``prompts/``), by path, or a literal template
    containing ``{}`` (e.g. ``"a photo of a {}."``)."""
    if isinstance(name_or_path, PromptSet):
        return name_or_path
    spec = name_or_path or DEFAULT_PROMPTS
    if "{}" in spec and not Path(spec).is_file():
        return PromptSet(spec, parse_templates(spec, "template"))
    path = Path(spec)
    if not path.is_file():
        for d in prompt_dirs():
            if (d / f"{spec}.txt").is_file():
                path = d / f"{spec}.txt"
                break
        else:
            raise UsageError(f"unknown prompt set '{spec}': use one of {available_prompt_sets()}, a file path, or a template with {{}}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: prompt file is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read prompt file ({err.strerror or err})") from None
    return PromptSet(path.stem, parse_templates(text, str(path)))


def clean_labels(labels) -> list[str]:
    """Strip names (inner runs of whitespace become one space), bring them to Unicode
    NFC (so "café" typed precomposed or decomposed is one label, as the tokenizers see
    it), drop empty ones, merge duplicates (first occurrence wins).
    Raises UsageError when nothing is left."""
    out, seen = [], set()
    for name in labels:
        name = unicodedata.normalize("NFC", " ".join(str(name).split()))
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    if not out:
        raise UsageError("no labels: give at least one non-empty label name")
    return out


_MEMORY: dict[tuple[str, str, str], torch.Tensor] = {}


def warn_truncated(backbone, labels: list[str], prompts: PromptSet) -> None:
    count = getattr(backbone, "token_count", None)
    if count is None:
        return
    longest = max(prompts.templates, key=len)
    for label in labels:
        n = count(longest.replace("{}", label))
        if n > backbone.context_length:
            print(f"sigrl: warning: label '{label[:40]}…' needs {n} tokens in prompt "
                  f"'{longest}', more than the text context ({backbone.context_length}); it is truncated",
                  file=sys.stderr)


def embed_labels(backbone, labels: list[str], prompts: PromptSet | str | None = None, *,
                 context: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """labels (C names) -> T (C, D), L2-normalised, averaged over the prompt templates.

    Without ``context`` the result is cached and computed without gradients. With
    ``context`` (M, W) learnable prompt vectors (CoOp), it is recomputed with gradients
    flowing into ``context``; each batch is cut to its longest prompt.
    """
    prompts = load_prompts(prompts)
    if context is not None:
        from .backbones.base import cut_to_longest

        per_template = []
        for template in prompts.templates:
            texts = [template.replace("{}", l) for l in labels]
            chunks = [backbone.encode_tokens(cut_to_longest(backbone.tokenize(texts[i:i + batch_size])).to(backbone.device), context)
                      for i in range(0, len(texts), batch_size)]
            per_template.append(torch.cat(chunks))
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)
    fp = backbone.fingerprint
    missing = [l for l in dict.fromkeys(labels) if (fp, prompts.key, l) not in _MEMORY]
    if missing:
        warn_truncated(backbone, missing, prompts)
        acc = None
        for template in prompts.templates:
            emb = backbone.encode_texts([template.replace("{}", l) for l in missing], batch_size)
            acc = emb if acc is None else acc + emb
        acc = F.normalize(acc / len(prompts.templates), dim=-1).cpu()
        for l, e in zip(missing, acc):
            _MEMORY[(fp, prompts.key, l)] = e
    if not labels:
        return torch.zeros(0, backbone.embed_dim)
    return torch.stack([_MEMORY[(fp, prompts.key, l)] for l in labels]).to(backbone.device)
