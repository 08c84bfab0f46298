"""The feature store behind `sigrl tag --features`: re-tagging without encoding,
another backbone's features refused, a torn shard rebuilt."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import save_tiny_clip
from sigrl.backbones import load_backbone
from sigrl.errors import UsageError
from sigrl.feature_store import FeatureStore
from sigrl.tagging import Tagger


def _scores(results):
    return {r.image: dict(r.tags) for r in results}


def _count_encodes(backbone, monkeypatch):
    calls = []
    real = backbone.encode_images

    def counted(pixels):
        calls.append(pixels.shape[0])
        return real(pixels)

    monkeypatch.setattr(backbone, "encode_images", counted)
    return calls


def test_retag_reads_stored_features_with_the_same_scores(tiny_clip_files, image_dir, tmp_path, monkeypatch):
    bb = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))
    store = tmp_path / "feats"
    first = Tagger(["dog", "cat"], backbone=bb, features=store).tag([image_dir], top_k=0)
    calls = _count_encodes(bb, monkeypatch)
    again = Tagger(["dog", "cat"], backbone=bb, features=store)
    calls.clear()  # the constructor's probe images
    second = again.tag([image_dir], top_k=0)
    assert calls == [] and _scores(first) == _scores(second)
    # new labels: still no encoding, and old labels keep their scores
    new = Tagger(["cat", "sunset", "dog"], backbone=bb, features=store)
    calls.clear()
    third = _scores(new.tag([image_dir], top_k=0))
    assert calls == []
    for image, tags in _scores(first).items():
        assert third[image]["dog"] == pytest.approx(tags["dog"], abs=1e-6)


def test_another_backbone_never_gets_these_features(tiny_clip_files, image_dir, tmp_path):
    a = load_backbone(str(tiny_clip_files[0]), str(tiny_clip_files[1]))
    cfg_b, w_b = save_tiny_clip(tmp_path / "other", seed=7)
    b = load_backbone(str(cfg_b), str(w_b))
    store = tmp_path / "feats"
    Tagger(["dog"], backbone=a, features=store).tag([image_dir])
    with_store = _scores(Tagger(["dog"], backbone=b, features=store).tag([image_dir]))
    plain = _scores(Tagger(["dog"], backbone=b).tag([image_dir]))
    for image in plain:  # b's own features (fp16-rounded), not a's
        assert with_store[image]["dog"] == pytest.approx(plain[image]["dog"], abs=2e-3)
    assert {p.name for p in store.iterdir() if p.is_dir()} == {a.fingerprint, b.fingerprint}


def test_same_name_other_weights_is_refused(tmp_path, image_dir):
    import json

    cfg, w = save_tiny_clip(tmp_path / "m", seed=0)
    store = tmp_path / "feats"
    first = load_backbone(str(cfg), str(w))
    Tagger(["dog"], backbone=first, features=store).tag([image_dir])
    save_tiny_clip(tmp_path / "m", seed=3)  # new weights under the same file names
    second = load_backbone(str(cfg), str(w))
    assert second.fingerprint != first.fingerprint  # the checkpoint hash is in the fingerprint: own folder
    Tagger(["dog"], backbone=second, features=store)
    # a backbone whose fingerprint matches but whose outputs do not (e.g. weights changed
    # under a name without a hash) is refused by the probe features
    info_path = store / first.fingerprint / "backbone.json"
    info = json.loads(info_path.read_text())
    info["probe_global"] = [x + 0.1 for x in info["probe_global"]]
    info_path.write_text(json.dumps(info))
    with pytest.raises(UsageError, match="other weights"):
        Tagger(["dog"], backbone=first, features=store)


def test_shard_of_another_fingerprint_is_refused(tiny_backbone, image_dir, tmp_path, capsys):
    store = tmp_path / "feats"
    Tagger(["dog"], backbone=tiny_backbone, features=store).tag([image_dir])
    folder = store / tiny_backbone.fingerprint
    shard = next(folder.glob("*.npz"))
    with np.load(shard) as z:
        data = dict(z)
    data["fingerprint"] = np.array("0123456789abcdef")
    np.savez(folder / "forged.npz", **data)
    shard.unlink()
    s = FeatureStore(store, tiny_backbone)
    assert len(s) == 0 and "forged.npz" in s.torn and "written by backbone" in capsys.readouterr().err


def test_torn_shard_is_set_aside_and_rebuilt(tiny_backbone, image_dir, tmp_path, capsys):
    store = tmp_path / "feats"
    first = _scores(Tagger(["dog", "cat"], backbone=tiny_backbone, features=store).tag([image_dir], top_k=0))
    folder = store / tiny_backbone.fingerprint
    shard = next(folder.glob("*.npz"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    second = _scores(Tagger(["dog", "cat"], backbone=tiny_backbone, features=store).tag([image_dir], top_k=0))
    assert "set aside" in capsys.readouterr().err
    assert second == first
    assert list(folder.glob("*.torn")) and len(FeatureStore(store, tiny_backbone)) == 3  # rebuilt


def test_store_serves_features_by_content_not_name(tiny_backbone, image_dir, tmp_path, monkeypatch):
    store = tmp_path / "feats"
    Tagger(["dog"], backbone=tiny_backbone, features=store).tag([image_dir])
    copy = tmp_path / "copy"
    shutil.copytree(image_dir, copy)
    (copy / "red_square.png").rename(copy / "renamed.png")
    t = Tagger(["dog"], backbone=tiny_backbone, features=store)
    calls = _count_encodes(tiny_backbone, monkeypatch)
    assert len(t.tag([copy])) == 3 and calls == []
