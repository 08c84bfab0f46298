"""The embedded world: generator determinism, label statistics, the on-disk format, and
a few-second pre-training of a micro CLIP whose checkpoint loads back into open_clip."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sigrl.cli import main as cli_main
from sigrl.data.csvdata import load_csv_dataset
from sigrl.errors import DataError, SigrlError, UsageError
from sigrl.world.generator import COLOURS, SHAPES, World, WorldSpec, ensure_world, generate_world, is_finished
from sigrl.world.pretrain import (
    PretrainSpec,
    ensure_tiny_vlp,
    get_tokenizer,
    load_tiny_vlp,
    pretrain,
    save_vlp,
)

MICRO = WorldSpec.quick(seed=3, image_size=64, n_pretrain=96, n_train=24, n_val=8, n_test=16)  # world-micro is 64 px


@pytest.fixture(scope="module")
def micro_root(tmp_path_factory) -> Path:
    return generate_world(MICRO, tmp_path_factory.mktemp("world") / "w")


def _sample_many(world: World, n: int, split: str = "train"):
    return [world.sample(split, i) for i in range(n)]


# -- the generator ----------------------------------------------------------------------------
def test_same_seed_same_images_and_labels():
    a, b = World(WorldSpec(seed=5)), World(WorldSpec(seed=5))
    for i in range(20):
        sa, sb = a.sample("test", i), b.sample("test", i)
        assert np.array_equal(sa.image, sb.image)
        assert sa.objects == sb.objects and sa.scene == sb.scene
    assert a.unseen == b.unseen
    assert np.array_equal(a.scene_probs, b.scene_probs)


def test_different_seed_differs():
    a, b = World(WorldSpec(seed=5)), World(WorldSpec(seed=6))
    assert not np.array_equal(a.sample("test", 0).image, b.sample("test", 0).image)
    assert a.unseen != b.unseen or not np.allclose(a.scene_probs, b.scene_probs)
    # images of different splits or indices differ too
    assert not np.array_equal(a.sample("test", 0).image, a.sample("train", 0).image)


def test_shape_twin_changes_only_shapes():
    """World.sample(twin="shape"): same scene, colours, places and noise, 1+ objects of another
    shape: most pixels equal (two unrelated images share almost none), compounds distinct."""
    w = World(WorldSpec(seed=2))
    for i in range(25):
        a, t = w.sample("pretrain", i), w.sample("pretrain", i, twin="shape")
        assert t.scene == a.scene and len(t.objects) == len(a.objects) == len(set(t.objects))
        assert [w.colour_of[o] for o in t.objects] == [w.colour_of[o] for o in a.objects]
        changed = [x != y for x, y in zip(a.objects, t.objects)]
        assert any(changed)
        assert all(w.shape_of[x] != w.shape_of[y] for x, y in zip(a.objects, t.objects) if x != y)
        same = np.all(a.image == t.image, axis=-1).mean()
        other = np.all(a.image == w.sample("pretrain", i + 100).image, axis=-1).mean()
        assert same > 0.7 and other < 0.05, (same, other)
        assert np.array_equal(t.image, w.sample("pretrain", i, twin="shape").image)  # deterministic


def test_colour_twin_rebinds_the_same_colours_and_shapes():
    """World.sample(twin="colour"): same scene, places and shapes; the same colours present
    but bound to other shapes (another set of compounds), so only binding tells the pair
    apart; only the recoloured objects' pixels change; an image whose objects share one
    colour has no colour twin (the image itself)."""
    w = World(WorldSpec(seed=3))
    found = 0
    for i in range(30):
        a, t = w.sample("pretrain", i), w.sample("pretrain", i, twin="colour")
        assert t.scene == a.scene and t.radii == a.radii and len(set(t.objects)) == len(t.objects)
        assert [w.shape_of[o] for o in t.objects] == [w.shape_of[o] for o in a.objects]
        assert sorted(w.colour_of[o] for o in t.objects) == sorted(w.colour_of[o] for o in a.objects)
        if set(t.objects) == set(a.objects):
            assert np.array_equal(t.image, a.image)
            continue
        found += 1
        same = np.all(a.image == t.image, axis=-1).mean()
        assert 0.5 < same < 1.0, same
        assert np.array_equal(t.image, w.sample("pretrain", i, twin="colour").image)  # deterministic
    assert found >= 25
    one = World(replace(WorldSpec(seed=3), n_colours=1))
    s = one.sample("pretrain", 0)
    assert one.sample("pretrain", 0, twin="colour").objects == s.objects
    with pytest.raises(UsageError, match="twin"):
        w.sample("pretrain", 0, twin=True)


def test_sample_radii_are_the_drawn_sizes():
    """Sample.radii: one per object, inside the spec's range (crowding only shrinks them),
    and the drawn size: with one object per image, the pixels an image and its shape twin
    disagree on (the object, nothing else) fit in a box of side 2 r + a few pixels of
    anti-aliasing, and two differently shaped objects of radius r differ over more than r."""
    spec = replace(WorldSpec(seed=4), min_objects=1, max_objects=1)
    w, side = World(spec), spec.image_size
    for i in range(20):
        a = w.sample("train", i)
        (r,) = a.radii
        assert spec.radius_min * side * 0.85 ** 3 - 1e-9 <= r <= spec.radius_max * side
        ys, xs = np.nonzero(np.any(a.image != w.sample("train", i, twin="shape").image, axis=-1))
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        assert r < extent <= 2 * r + 5, (r, extent)
    crowded = World(replace(WorldSpec(seed=4), min_objects=6, max_objects=6))
    s = crowded.sample("train", 0)
    assert len(s.radii) == len(s.objects) == 6 and max(s.radii) <= spec.radius_max * side


def test_images_are_rgb_at_the_spec_size():
    s = World(WorldSpec(image_size=48)).sample("train", 0)
    assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8


def test_label_statistics():
    spec = WorldSpec(seed=1)
    world = World(spec)
    samples = _sample_many(world, 600)
    counts = [len(s.objects) for s in samples]
    assert min(counts) == 2 and max(counts) == 6  # world v2: 2-6 objects per image
    assert set(counts) == {2, 3, 4, 5, 6}
    for s in samples:
        assert len(set(s.objects)) == len(s.objects)  # distinct compounds per image
    # the k that EPR / ROLE get: the mean labels per image (600 draws: standard error 0.06)
    assert spec.mean_labels_per_image == 4.0
    assert abs(np.mean(counts) - spec.mean_labels_per_image) < 0.25
    assert replace(spec, min_objects=1, max_objects=2).mean_labels_per_image == 1.5
    # 48 compound labels, 25% unseen, every colour and shape among the seen labels
    assert len(world.labels) == 48 and len(world.unseen) == 12
    assert set(world.seen) | set(world.unseen) == set(world.labels)
    seen_colours = {l.split(" ")[0] for l in world.seen}
    seen_shapes = {l.split(" ", 1)[1] for l in world.seen}
    assert seen_colours == set(list(COLOURS)[:8]) and seen_shapes == set(SHAPES[:6])
    # unseen labels do occur in images (zero-shot needs them in the test split)
    present = {world.labels[o] for s in samples for o in s.objects}
    assert set(world.unseen) <= present


def test_cooccurrence_differs_across_scene_types():
    world = World(WorldSpec(seed=2))
    samples = _sample_many(world, 900)
    C, S = len(world.labels), world.spec.n_scenes
    freq = np.zeros((S, C))
    for s in samples:
        freq[s.scene, s.objects] += 1
    freq /= freq.sum(1, keepdims=True)
    uniform = np.full(C, 1 / C)
    # every scene is far from uniform and the scenes differ from each other
    assert all(0.5 * np.abs(f - uniform).sum() > 0.25 for f in freq)
    tv = [0.5 * np.abs(freq[i] - freq[j]).sum() for i in range(S) for j in range(i + 1, S)]
    assert min(tv) > 0.2
    # pairs of labels co-occur non-uniformly in images
    pair = np.zeros((C, C))
    for s in samples:
        for a in s.objects:
            for b in s.objects:
                if a != b:
                    pair[a, b] += 1
    off = pair[~np.eye(C, dtype=bool)]
    assert off.max() > 8 * max(off.mean(), 1e-9)


def test_unseen_split_with_other_sizes():
    world = World(WorldSpec(n_colours=10, n_shapes=8, unseen_fraction=0.25, seed=4))
    assert len(world.unseen) == 20
    assert {l.split(" ")[0] for l in world.seen} == set(world.colours)
    assert {l.split(" ", 1)[1] for l in world.seen} == set(world.shapes)


def test_captions_name_the_objects():
    world = World(WorldSpec(seed=0, shape_only_captions=0.3, colour_only_captions=0.1, mixed_captions=0.2))
    rng = np.random.default_rng(0)
    kinds = {"full": 0, "shape": 0, "colour": 0}
    for i in range(300):
        s = world.sample("pretrain", i)
        cap = world.caption(s.objects, rng)
        shapes = {world.shapes[world.shape_of[o]] for o in s.objects}
        colours = {world.colours[world.colour_of[o]] for o in s.objects}
        has_shape = all(sh in cap for sh in shapes)
        has_colour = all(c in cap for c in colours)
        assert has_shape or has_colour, cap
        if has_shape and has_colour:
            kinds["full"] += 1
        elif has_shape:
            kinds["shape"] += 1
        else:
            kinds["colour"] += 1
    assert all(v > 0 for v in kinds.values()), kinds


def test_bad_spec_is_a_user_error():
    with pytest.raises(SigrlError):
        WorldSpec(min_objects=3, max_objects=2)
    with pytest.raises(SigrlError):
        WorldSpec(n_shapes=99)
    with pytest.raises(SigrlError):
        WorldSpec.from_dict({"seed": 1, "colours": 3})


# -- on disk ----------------------------------------------------------------------------------
def test_files_in_the_generic_csv_format(micro_root: Path):
    root = micro_root
    labels = (root / "labels.txt").read_text().splitlines()
    unseen = (root / "unseen.txt").read_text().splitlines()
    assert len(labels) == 48 and len(unseen) == 12 and set(unseen) <= set(labels)
    for split, n in (("train", 24), ("val", 8), ("test", 16)):
        text = (root / f"{split}.csv").read_text()
        assert text.startswith("image,labels\n")
        rows = list(csv.DictReader(text.splitlines()))
        assert len(rows) == n
        for i, row in enumerate(rows):
            assert row["image"] == f"images/{split}/{i:06d}.png"
            assert (root / row["image"]).is_file()
            names = row["labels"].split("|")
            assert 2 <= len(names) <= 6 and set(names) <= set(labels)
    caps = list(csv.DictReader((root / "captions.csv").read_text().splitlines()))
    assert len(caps) == 96 and list(caps[0]) == ["image", "caption"]
    assert all(c["image"].startswith("images/pretrain/") and c["caption"] for c in caps)
    meta = json.loads((root / "world.json").read_text())
    assert meta["spec"] == MICRO.to_dict() and meta["counts"] == {"pretrain": 96, "train": 24, "val": 8, "test": 16}
    assert meta["labels"] == labels and meta["unseen"] == unseen
    # the project's own reader accepts it
    ds = load_csv_dataset(root)
    assert ds.unseen == unseen and len(ds.test) == 16
    assert ds.train.targets.shape == (24, 36) and set(np.unique(ds.train.targets)) <= {1, -1}


def test_generation_is_byte_identical(micro_root: Path, tmp_path: Path):
    other = generate_world(MICRO, tmp_path / "again")
    for name in ("labels.txt", "unseen.txt", "train.csv", "test.csv", "captions.csv"):
        assert (other / name).read_bytes() == (micro_root / name).read_bytes()
    for rel in ("images/test/000003.png", "images/pretrain/000007.png"):
        assert (other / rel).read_bytes() == (micro_root / rel).read_bytes()
    different = generate_world(replace(MICRO, seed=4, n_pretrain=4), tmp_path / "other")
    assert (different / "images/test/000003.png").read_bytes() != (micro_root / "images/test/000003.png").read_bytes()


def test_unfinished_world_is_not_reused(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SIGRL_CACHE", str(tmp_path / "cache"))
    spec = replace(MICRO, n_pretrain=8, n_train=8, n_val=2, n_test=4)
    root = ensure_world(spec)
    assert is_finished(root, spec)
    # a killed generation: world.json missing -> regenerated, not trusted
    (root / "world.json").unlink()
    (root / "test.csv").write_text("garbage\n")
    assert not is_finished(root, spec)
    again = ensure_world(spec)
    assert again == root and is_finished(root, spec)
    assert (root / "test.csv").read_text().startswith("image,labels\n")
    # a world.json from another spec does not count either
    assert not is_finished(root, replace(spec, seed=spec.seed + 1))


def test_cli_world_generate(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SIGRL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cli-world"
    assert cli_main(["world", "generate", "--quick", "--seed", "2", "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert is_finished(out, WorldSpec.quick(seed=2))
    assert cli_main(["world"]) == 2


# -- pre-training -----------------------------------------------------------------------------
TRAIN = PretrainSpec(model="world-micro", steps=40, batch_size=32, lr=3e-3, warmup=4, seed=0, threads=1)


@pytest.fixture(scope="module")
def trained(micro_root: Path):
    return pretrain(micro_root, TRAIN, progress=False)


def test_pretraining_lowers_the_contrastive_loss(trained):
    losses = trained.losses
    assert len(losses) == TRAIN.steps and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert len(trained.preprocess_cfg["mean"]) == 3 and all(0 < s < 1 for s in trained.preprocess_cfg["std"])


def test_checkpoint_loads_back_with_identical_outputs(trained, micro_root: Path, tmp_path: Path):
    import open_clip

    config, weights = save_vlp(trained, tmp_path / "vlp")
    cfg = json.loads(config.read_text())
    assert {"embed_dim", "vision_cfg", "text_cfg", "preprocess_cfg"} <= set(cfg)
    x = torch.randn(3, 3, 64, 64)
    tokens = get_tokenizer()(["a red star.", "two rings and a blue square.", "something green."],
                             context_length=cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        ref_img, ref_txt = trained.model.encode_image(x), trained.model.encode_text(tokens)
        loaded, pre = load_tiny_vlp(config, weights)
        via_dir = open_clip.create_model(f"local-dir:{config.parent}").eval()
        for model in (loaded, via_dir):
            assert torch.equal(model.encode_image(x), ref_img)
            assert torch.equal(model.encode_text(tokens), ref_txt)
    assert pre == trained.preprocess_cfg


def test_ensure_tiny_vlp_caches(micro_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SIGRL_CACHE", str(tmp_path / "cache"))
    spec = replace(TRAIN, steps=3)
    config, weights = ensure_tiny_vlp(micro_root, spec, progress=False)
    assert config.parent.parent == tmp_path / "cache" and config.parent.name.startswith("vlp-")
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_vlp(micro_root, spec, progress=False) == (config, weights)
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained
    other, _ = ensure_tiny_vlp(micro_root, replace(spec, seed=1), progress=False)
    assert other != config
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_pretraining_a_world_without_captions_says_how_to_get_them(tmp_path: Path):
    root = generate_world(replace(MICRO, n_pretrain=0, n_train=8, n_val=2, n_test=4), tmp_path / "no-captions")
    with pytest.raises(DataError, match=r"0 captioned images.*n_pretrain=N.*--model world"):
        pretrain(root, TRAIN, progress=False)
