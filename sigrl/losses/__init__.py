"""Training losses, built by name.

Every loss is an ``nn.Module``: its constructor takes the hyper-parameters (and, for
losses with per-image state, ``num_images`` / ``num_classes``); its forward takes only
tensors::

    loss = build_loss("ll_r", delta_rel=0.002)
    value = loss(logits, observed, index=index, epoch=epoch)   # scalar

``logits`` (B, C) are raw scores; ``observed`` (B, C) holds +1 (observed positive),
-1 (observed negative) and 0 (unobserved). ``index`` (B,) are dataset indices (used by
``role``); ``epoch`` (0-based) is used by ``ll_r``.

Names (``LOSSES``, from :data:`sigrl.registry.LOSSES`):
    full     BCE on the observed entries only (upper bound when all labels are known)
    an       assume negative: unobserved entries count as negatives
    wan      weighted AN: assumed negatives weighted 1/(C-1)
    epr      expected positive regularisation (Cole et al. 2021)
    role     regularised online label estimation (Cole et al. 2021)
    em       entropy maximisation on unobserved entries (Zhou et al. 2022)
    em_apl   EM + asymmetric pseudo labelling (Zhou et al. 2022)
    ll_r     large-loss rejection (Kim et al. 2022)
    vlpl     vision-language pseudo labels (Xing et al. 2023), see sigrl.methods.vlpl
    ranking  pairwise ranking loss of zero-shot training (sigrl.losses.ranking)

``ConditionalTransportLoss`` (SCT / SARL) lives in :mod:`sigrl.losses.transport`; it
takes label-specific features rather than logits, so it is not in this registry.
"""
from __future__ import annotations

import inspect

from torch import nn

from sigrl.errors import ConfigError
from sigrl.registry import LOSSES as _LOSSES

LOSSES: tuple[str, ...] = _LOSSES.names


def __getattr__(name):  # the loss classes, imported on first use (sigrl.losses.AssumeNegativeLoss)
    if name == "ConditionalTransportLoss":
        from sigrl.losses.transport import ConditionalTransportLoss

        return ConditionalTransportLoss
    key = _LOSSES.resolve_name(name)
    if key is not None and name != key:
        return _LOSSES.get(key)
    raise AttributeError(f"module 'sigrl.losses' has no attribute {name!r}")


# Facts about the run a trainer knows; passed to a loss only if its constructor takes them.
CONTEXT_KEYS: tuple[str, ...] = ("num_images", "num_classes", "num_epochs", "embed_dim", "steps_per_epoch")


def build_loss(name: str, **options) -> nn.Module:
    """Build the loss called ``name`` with hyper-parameters ``options``.

    ``num_images``, ``num_classes`` and ``num_epochs`` (``CONTEXT_KEYS``) may always be
    given: they reach the losses whose constructor takes them and are dropped for the
    others, so a trainer can call ``build_loss(name, num_images=N, num_classes=C,
    num_epochs=E, **config_options)`` for any name.
    Raises ``ConfigError`` for an unknown name, an unknown or missing option or a bad value.
    """
    key = str(name).lower()
    if key not in _LOSSES.names:
        raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    cls = _LOSSES.get(key)
    # a loss without its own __init__ takes no options (nn.Module.__init__ takes *args, **kwargs)
    params = {} if cls.__init__ is nn.Module.__init__ else inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    valid = ", ".join(named) or "(none)"
    if not accepts_any:
        options = {k: v for k, v in options.items() if k in named or k not in CONTEXT_KEYS}
        unknown = sorted(set(options) - set(named))
        if unknown:
            raise ConfigError(f"loss {key!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")
        missing = [n for n, p in named.items() if p.default is p.empty and n not in options]
        if missing:
            raise ConfigError(f"loss {key!r} needs option(s) {', '.join(missing)}; valid options: {valid}")
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"loss {key!r}: {err}; valid options: {valid}") from err


__all__ = ["LOSSES", "CONTEXT_KEYS", "build_loss", "RankingLoss", "ConditionalTransportLoss"]
