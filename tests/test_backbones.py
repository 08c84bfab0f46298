"""Backbones: open_clip from a JSON config + local checkpoint, Hugging Face CLIP from a
directory; the context cut gives identical embeddings; local tokens share the projection."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from sigrl.backbones import load_backbone
from sigrl.errors import CheckpointError, UsageError
from sigrl.prompts import embed_labels, load_prompts

from conftest import TINY_CLIP_CFG, save_tiny_clip


def test_open_clip_json_and_checkpoint_roundtrip(tiny_clip_files):
    config, weights = tiny_clip_files
    bb = load_backbone(str(config), str(weights))
    torch.manual_seed(0)
    reference = open_clip.CLIP(**TINY_CLIP_CFG).eval()  # same seed as the saved model
    texts = ["a photo of a dog.", "There is a red star in the scene.", "x"]
    ours = bb.encode_texts(texts)
    full = F.normalize(reference.encode_text(open_clip.SimpleTokenizer(context_length=77)(texts)), dim=-1)
    assert torch.allclose(ours, full, atol=1e-5)  # cut context == full context
    pixels = torch.randn(2, 3, 64, 64)
    g, local = bb.encode_images(pixels)
    assert g.shape == (2, 64) and local.shape == (2, 16, 64)
    assert torch.allclose(g, F.normalize(reference.encode_image(pixels), dim=-1), atol=1e-5)
    # local tokens: the ViT's normed patch tokens through the same projection, RAW (not
    # normalised: the reference feeds x[:, 1:] @ proj as it is into SVFR and the top-k)
    reference.visual.output_tokens = True
    _, tokens = reference.visual(pixels)
    assert torch.allclose(local, tokens @ reference.visual.proj, atol=1e-5)
    assert not torch.allclose(local.norm(dim=-1), torch.ones(2, 16), atol=1e-2)
    assert all(not p.requires_grad for p in bb.parameters()) and not bb.training
    assert bb.spec["checkpoint_sha256"] and len(bb.fingerprint) == 16


def test_wrong_checkpoint_and_unknown_model_fail_clearly(tmp_path, tiny_clip_files):
    config, _ = tiny_clip_files
    other_cfg = json.loads(json.dumps(TINY_CLIP_CFG))
    other_cfg["embed_dim"] = 32
    _, other_weights = save_tiny_clip(tmp_path / "other", cfg=other_cfg)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_backbone(str(config), str(other_weights))
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(str(config), str(tmp_path / "nope.safetensors"))
    with pytest.raises(UsageError, match="unknown open_clip model"):
        load_backbone("ViT-Q-99")
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_backbone(str(config), str(bad))


def test_prompt_tuning_context_changes_embeddings_and_gets_gradients(tiny_backbone):
    ctx = torch.zeros(3, tiny_backbone.text_width, requires_grad=True)
    prompts = load_prompts("photo")
    plain = embed_labels(tiny_backbone, ["dog", "cat"], prompts)
    tuned = embed_labels(tiny_backbone, ["dog", "cat"], prompts, context=ctx * 1 + 0.5)
    assert not torch.allclose(plain, tuned)
    tuned.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_prompt_ensemble_is_mean_of_normalised_templates(tiny_backbone):
    ens = load_prompts("ensemble")
    assert len(ens.templates) > 1
    got = embed_labels(tiny_backbone, ["red star"], ens)
    parts = [tiny_backbone.encode_texts([t.replace("{}", "red star")]) for t in ens.templates]
    expected = F.normalize(torch.stack(parts).mean(0), dim=-1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert load_prompts("There is a {} in the scene.").templates == load_prompts("scene").templates
    with pytest.raises(UsageError, match="unknown prompt set"):
        load_prompts("no-such-set")


def _write_hf_tokenizer_files(directory):
    """vocab.json + merges.txt from open_clip's bundled BPE (HF special-token names)."""
    tok = open_clip.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in tok.encoder.items()}
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def save_tiny_hf_clip(d: Path) -> Path:
    """A tiny random Hugging Face CLIPModel saved in ``d`` (model.safetensors, no tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("hf_clip"))


def test_hf_clip_directory_with_tokenizer(hf_clip_dir):
    _write_hf_tokenizer_files(hf_clip_dir)
    bb = load_backbone(str(hf_clip_dir))
    ids = bb.tokenizer(["a red star"])["input_ids"][0]
    assert ids == open_clip.SimpleTokenizer()("a red star")[0][: len(ids)].tolist()  # identical token ids
    g, local = bb.encode_images(torch.randn(2, 3, 32, 32))
    assert g.shape == (2, 16) and local.shape == (2, 16, 16)
    texts = ["a dog", "There is a red star in the scene."]
    batched = bb.encode_texts(texts)
    single = torch.cat([bb.encode_texts([t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)  # padding to the batch's longest is harmless
    full = bb.encode_tokens(bb.tokenize(texts))
    assert torch.allclose(batched, full, atol=1e-5)


def _features(out):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output
    is the projected embedding (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_hf_embeddings_equal_transformers_own_outputs(hf_clip_dir):
    """Image global embedding, raw patch tokens and text embeddings against
    transformers.CLIPModel's own methods on the same saved weights."""
    from transformers import CLIPModel, CLIPTokenizer

    _write_hf_tokenizer_files(hf_clip_dir)
    bb = load_backbone(str(hf_clip_dir))
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(hf_clip_dir)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g, local = bb.encode_images(pixels)
    with torch.no_grad():
        want_g = _features(model.get_image_features(pixel_values=pixels))
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state  # (B, 1 + P, W)
        tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))
    torch.testing.assert_close(g, F.normalize(want_g, dim=-1), atol=1e-5, rtol=1e-5)
    # the class token through post_layernorm + visual_projection IS get_image_features:
    # the patch tokens below go the same way
    torch.testing.assert_close(tokens[:, 0], want_g, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local, tokens[:, 1:], atol=1e-5, rtol=1e-5)  # raw, not normalised
    assert local.shape == (3, 16, 16) and not torch.allclose(local.norm(dim=-1), torch.ones(3, 16), atol=1e-2)
    texts = ["a dog", "There is a red star in the scene.", "x"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want_t = _features(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    torch.testing.assert_close(bb.encode_texts(texts), F.normalize(want_t, dim=-1), atol=1e-5, rtol=1e-5)


def test_hf_offline_tokenizer_trap_is_detected(hf_clip_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(hf_clip_dir, bare)
    for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_backbone(str(bare))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"image_mean": [0.5, 0.5]}', '{"image_std": "wide"}',
                                  "\xff\xfe"])
def test_hf_malformed_preprocessor_config_is_one_error(hf_clip_dir, tmp_path, text):
    import shutil

    _write_hf_tokenizer_files(hf_clip_dir)
    d = tmp_path / "model"
    shutil.copytree(hf_clip_dir, d)
    (d / "preprocessor_config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match="preprocessor_config.json: unusable"):
        load_backbone(str(d))
    (d / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}')
    assert load_backbone(str(d)).preprocess_config.mean == (0.1, 0.2, 0.3)
