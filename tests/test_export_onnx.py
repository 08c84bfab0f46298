"""`sigrl export onnx`: ONNX Runtime gives the torch towers' outputs (<= 1e-4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_onnx_towers_match_torch(tiny_clip_files, tiny_backbone, tmp_path, capsys):
    from sigrl.cli import main
    from sigrl.export import OnnxTowers

    cfg, w = map(str, tiny_clip_files)
    assert main(["export", "onnx", str(tmp_path / "out"), "--model", cfg, "--pretrained", w]) == 0
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["fingerprint"] == tiny_backbone.fingerprint
    towers = OnnxTowers(tmp_path / "out")
    torch.manual_seed(0)
    for batch in (1, 3):  # dynamic batch axis
        pixels = torch.randn(batch, 3, 64, 64)
        g, l = tiny_backbone.encode_images(pixels)
        g2, l2 = towers.encode_images(pixels.numpy())
        assert np.abs(g.numpy() - g2).max() <= 1e-4 and np.abs(l.numpy() - l2).max() <= 1e-4
    tokens = tiny_backbone.tokenize(["a photo of a red car", "dog", "rouge vif ✓"]).long()
    t = tiny_backbone.encode_tokens(tokens).numpy()
    assert np.abs(t - towers.encode_tokens(tokens.numpy())).max() <= 1e-4


# ------------------------------------------------------------- scores.onnx: labels fixed
@pytest.fixture(scope="module")
def sigrl_run(tmp_path_factory, tiny_clip_files):
    from sigrl.train import train
    from test_train import config, make_dataset

    root = make_dataset(tmp_path_factory.mktemp("onnx-data"), n_train=16, n_val=4, n_test=8, seed=5)
    cfg = config(tmp_path_factory.mktemp("onnx-run"), root, tiny_clip_files, "head.class=sigrl",
                 "head.options.preset=ours", "head.options.logit_bias=2.0", "train.epochs=1")
    train(cfg, progress=False)
    return cfg.output, root


def _features(backbone, n=5, seed=1):
    torch.manual_seed(seed)
    return backbone.encode_images(torch.randn(n, 3, 64, 64))


@pytest.mark.parametrize("kind", ["independent", "softmax"])
def test_scores_onnx_equals_the_tagger_plain_matching(tiny_clip_files, tiny_backbone, tmp_path, kind):
    from sigrl.export import OnnxTowers, export_onnx
    from sigrl.tagging import Tagger

    labels = ["red square", "blue circle", "green ring", "yellow star"]
    tagger = Tagger(labels, backbone=tiny_backbone, scores=kind)
    info = export_onnx(None, tmp_path / "out", tagger=tagger, threshold=0.4)
    assert info["labels"] == labels and info["score_kind"] == kind and info["thresholds"] == pytest.approx([0.4] * 4)
    g, l = _features(tiny_backbone)
    want = tagger.score_features(g, l).numpy()
    got = OnnxTowers(tmp_path / "out").score_features(g.numpy(), l.numpy())
    assert got.shape == (5, 4) and np.abs(got - want).max() <= 1e-4
    if kind == "softmax":
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_scores_onnx_with_a_trained_sigrl_head(sigrl_run, tiny_backbone, tmp_path):
    """A run's head in the graph: labels of the run (one pass over its training set) and one
    it never saw (its own pass, training labels + it) give the Tagger's probabilities."""
    from sigrl.checkpoint import load_run
    from sigrl.export import OnnxTowers, export_onnx
    from sigrl.tagging import Tagger

    run_dir, _ = sigrl_run
    run = load_run(run_dir)
    labels = [run.labels[1], "purple ring", run.labels[0]]
    tagger = Tagger(labels, checkpoint=run_dir)
    assert tagger.head is not None
    export_onnx(None, tmp_path / "out", tagger=tagger)
    g, l = _features(tagger.backbone, n=4)
    want = tagger.score_features(g, l).numpy()
    towers = OnnxTowers(tmp_path / "out")
    got = towers.score_features(g.numpy(), l.numpy())
    assert np.abs(got - want).max() <= 1e-4
    # the head matters: plain matching of the same labels gives other numbers
    plain = Tagger(labels, backbone=tagger.backbone).score_features(g, l).numpy()
    assert np.abs(plain - want).max() > 1e-3
    # dynamic batch
    assert towers.score_features(g[:1].numpy(), l[:1].numpy()).shape == (1, 3)


def test_onnx_tagging_end_to_end_equals_the_tagger(sigrl_run, tmp_path, image_dir, capsys):
    """`sigrl export onnx --checkpoint RUN --labels ...` then `sigrl tag --onnx DIR`: the same
    tags and scores (<= 1e-4) as `sigrl tag --checkpoint RUN` on real image files."""
    from sigrl.cli import main

    run_dir, _ = sigrl_run
    labels = "red,blue,purple ring"
    assert main(["export", "onnx", str(tmp_path / "out"), "--checkpoint", str(run_dir), "--labels", labels]) == 0
    capsys.readouterr()
    assert main(["tag", str(image_dir), "--checkpoint", str(run_dir), "--labels", labels, "--top-k", "0",
                 "--format", "json", "--workers", "0"]) == 0
    torch_out = json.loads(capsys.readouterr().out)
    assert main(["tag", str(image_dir), "--onnx", str(tmp_path / "out"), "--top-k", "0", "--format", "json",
                 "--workers", "0"]) == 0
    onnx_out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in onnx_out] == [r["image"] for r in torch_out] and len(torch_out) >= 2
    for a, b in zip(torch_out, onnx_out):
        sa = {t["label"]: t["score"] for t in a["tags"]}
        sb = {t["label"]: t["score"] for t in b["tags"]}
        assert set(sa) == set(sb) == {"red", "blue", "purple ring"}
        assert max(abs(sa[k] - sb[k]) for k in sa) <= 1e-4
    # other labels than the export's are refused, with the fix in the message
    assert main(["tag", str(image_dir), "--onnx", str(tmp_path / "out"), "--labels", "red,green"]) == 2
    assert "export again" in capsys.readouterr().err
