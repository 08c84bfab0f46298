"""The paper's training regime (backbone.finetune): exactly the last N ViT blocks, ln_post
and proj change; everything else in the backbone stays bit-identical; the layer-wise lr
decay follows BEiT's rule; the distillation term is the L1 distance to the frozen tower;
the run saves the tuned tensors and `sigrl eval` scores with them."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sigrl.backbones import load_backbone
from sigrl.errors import ConfigError
from sigrl.evaluate import evaluate_run
from sigrl.finetune import FinetunedTail, FinetuneSpec
from sigrl.train import train

from test_train import config, dataset  # noqa: F401 (fixture)


def test_only_the_tail_changes_and_eval_uses_it(tmp_path, dataset, tiny_clip_files):
    before = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))
    n_blocks = len(before.model.visual.transformer.resblocks)
    cfg = config(tmp_path, dataset, tiny_clip_files, "backbone.finetune.blocks=1", "train.epochs=2",
                 "train.lr=0.05", "backbone.finetune.randaugment=false")
    res = train(cfg, progress=False)
    assert res.epochs_trained == 2
    # the saved tensors: block n-1, ln_post and proj, nothing else
    from safetensors.torch import load_file

    tuned = load_file(str(Path(cfg.output) / "backbone.safetensors"))
    last = f"transformer.resblocks.{n_blocks - 1}."
    assert tuned and all(k.startswith((last, "ln_post.")) or k == "proj" for k in tuned)
    assert "proj" in tuned and any(k.startswith(last) for k in tuned) and any(k.startswith("ln_post.") for k in tuned)
    orig = dict(before.model.visual.named_parameters())
    assert any(not torch.equal(tuned[k], orig[k]) for k in tuned)  # they trained
    # `sigrl eval` scores with the tuned tower: same numbers as the trainer's best epoch
    result = evaluate_run(cfg.output, progress=False, write=False)
    best = {k[len("test/"):]: v for k, v in res.best_metrics.items() if k.startswith("test/")}
    for k, v in best.items():
        assert result["metrics"][k] == pytest.approx(v, abs=1e-5), k


def test_tail_step_changes_exactly_the_tail(tiny_clip_files):
    bb = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))
    whole = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    tail = FinetunedTail(bb, FinetuneSpec(blocks=1))
    opt = torch.optim.SGD([p for g in tail.param_groups(0.1, 0.0) for p in g["params"]], lr=0.1)
    g, l, distill = tail(torch.randn(2, 3, bb.preprocess_config.image_size, bb.preprocess_config.image_size))
    (g.sum() + l.pow(2).mean() + distill).backward()
    opt.step()
    n = len(bb.model.visual.transformer.resblocks)
    trained = (f"visual.transformer.resblocks.{n - 1}.", "visual.ln_post.")
    for name, p in bb.model.named_parameters():
        in_tail = name.startswith(trained) or name == "visual.proj"
        assert torch.equal(p, whole[name]) == (not in_tail), name
    # the teacher is the untouched original tower
    assert all(torch.equal(p, whole["visual." + n_]) for n_, p in tail.teacher.named_parameters())


def test_layerwise_lr_decay_and_distillation_formula(tiny_clip_files):
    bb = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))
    n = len(bb.model.visual.transformer.resblocks)
    spec = FinetuneSpec(blocks=min(2, n), layer_decay=0.5, weight_decay=0.05)
    tail = FinetunedTail(bb, spec)
    names = {id(p): name for name, p in bb.model.visual.named_parameters()}
    for group in tail.param_groups(1.0, 0.0):
        for p in group["params"]:
            name = names[id(p)]
            if name.startswith("transformer.resblocks."):
                k = int(name.split(".")[2])
                assert group["lr"] == pytest.approx(0.5 ** (n - k)), name  # BEiT: decay^(L - k)
            else:
                assert group["lr"] == 1.0, name  # ln_post, proj
            assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.05), name
    # distillation: mean |g_student - g_frozen| of the L2-normalised global embeddings
    x = torch.randn(3, 3, bb.preprocess_config.image_size, bb.preprocess_config.image_size)
    with torch.no_grad():
        tail.visual.proj.add_(0.1)  # the student moves away from the teacher
        g, _, distill = tail(x)
        frozen = copy.deepcopy(tail.teacher)(x)[0]
        frozen = frozen / frozen.norm(dim=-1, keepdim=True)
    assert distill.item() == pytest.approx((g - frozen).abs().mean().item(), rel=1e-5)


def test_finetune_config_errors():
    with pytest.raises(ConfigError, match="blocks"):
        FinetuneSpec.from_dict({"blocks": -1})
    with pytest.raises(ConfigError, match="unknown"):
        FinetuneSpec.from_dict({"block": 2})


def test_nuswide_config_is_the_reference_preset_and_the_regime_is_one_key():
    from sigrl.checkpoint import build_head
    from sigrl.config import load_config
    from sigrl.paths import CONFIGS_DIR

    cfg = load_config(CONFIGS_DIR / "nuswide_zsl.yaml")
    head = build_head(cfg.head.head_class, 32, cfg.head.options)
    assert head.config["preset"] == "reference" and head.config["combine"] == "l2"
    assert not FinetuneSpec.from_dict(cfg.backbone.finetune).enabled
    cfg = load_config(CONFIGS_DIR / "nuswide_zsl.yaml", ["backbone.finetune.blocks=2"])
    spec = FinetuneSpec.from_dict(cfg.backbone.finetune)
    assert spec.enabled and spec.blocks == 2 and spec.randaugment and spec.distill_weight > 0
