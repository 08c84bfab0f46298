"""The world model shipped in the package (sigrl/world/model/): its manifest agrees with
the file, it loads through the normal backbone path (``--model world``, configs'
``backbone.model: world``), and the corpus it was trained on is fixed and reproducible."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sigrl.backbones import load_backbone
from sigrl.world import generator as gen
from sigrl.world import ship
from sigrl.world.probe import (attribute_targets, bag_oracle_scores, colour_oracle_scores, linear_probe,
                               linear_probe_scores, macro_ap, mlp_probe_scores, roc_auc, shape_ap, shape_auc_by_size,
                               shape_oracle_scores)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return ship.read_manifest()


def test_manifest_names_the_shipped_files_and_their_hash(manifest):
    weights = ship.SHIPPED_DIR / manifest["weights"]
    config = ship.SHIPPED_DIR / manifest["config"]
    assert weights.is_file() and config.is_file()
    assert ship.sha256_file(weights) == manifest["sha256"]
    assert weights.stat().st_size == manifest["bytes"] <= 25 * 2 ** 20
    cfg = json.loads(config.read_text())
    assert {k: v for k, v in cfg.items() if k != "preprocess_cfg"} == manifest["model_cfg"]
    assert cfg["preprocess_cfg"] == manifest["preprocess_cfg"]
    # what it takes to reproduce it
    assert manifest["command"] and manifest["steps"] >= 1 and np.isfinite(manifest["final_loss"])
    assert manifest["spec"] == {**ship.ShipSpec().to_dict(), **manifest["spec"]}
    assert manifest["corpus"]["corpus_seed"] == gen.CORPUS_SEED
    assert manifest["corpus"]["generator_version"] == gen.GENERATOR_VERSION
    report = manifest.get("report") or {}
    assert set(report.get("probe", {})) == {"colour", "shape"}


def test_shipped_model_loads_through_the_backbone_path():
    backbone = load_backbone("world")
    config, weights = ship.shipped_paths()
    assert ship.sha256_file(weights).startswith(backbone.spec["checkpoint_sha256"])
    img = gen.World(gen.WorldSpec(seed=0)).sample("test", 0).image
    from PIL import Image

    x = backbone.preprocess(Image.fromarray(img)).unsqueeze(0)
    with torch.no_grad():
        g, local = backbone.encode_images(x)
        t = backbone.encode_texts(["a photo of a red star.", "a photo of a blue ring."])
    assert g.shape == (1, 128) and local.shape == (1, 64, 128)  # 96 px, patch 12: 64 tokens
    assert torch.allclose(g.norm(dim=-1), torch.ones(1), atol=1e-4)
    assert t.shape == (2, 128)
    # the same model as naming the files
    again = load_backbone(str(config), str(weights))
    with torch.no_grad():
        assert torch.equal(again.encode_images(x)[0], g)


def test_configs_backbone_world_is_the_shipped_model(tmp_path):
    from sigrl.config import load_config
    from sigrl.experiment import build_backbone
    from sigrl.paths import CONFIGS_DIR

    cfg = load_config(CONFIGS_DIR / "world_zsl.yaml", ["data.world.quick=true"])
    backbone = build_backbone(cfg, None)
    assert ship.sha256_file(ship.WEIGHTS).startswith(backbone.spec["checkpoint_sha256"])


def test_corpus_is_fixed_and_matches_the_world_files(tmp_path):
    spec = gen.corpus_spec(n_pretrain=6)
    a_img, a_cap, a_obj = gen.render_corpus(spec, 0, 6)
    b_img, b_cap, b_obj = gen.render_corpus(gen.corpus_spec(n_pretrain=6), 2, 6)
    assert np.array_equal(a_img[2:], b_img) and a_cap[2:] == b_cap and a_obj[2:] == b_obj
    assert gen.corpus_spec().seed == gen.CORPUS_SEED  # never the demo's --seed
    assert a_img.shape == (6, 96, 96, 3)
    root = gen.generate_world(spec, tmp_path / "w")
    from PIL import Image

    with Image.open(root / "images/pretrain/000004.png") as im:
        assert np.array_equal(np.array(im), a_img[4])
    rows = (root / "captions.csv").read_text().splitlines()[1:]
    assert rows[4].split(",", 1)[1].strip('"') == a_cap[4]


def test_oracles_and_probe():
    labels = ["red star", "red ring", "blue star", "blue ring"]
    targets = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0]], dtype=np.int8)
    rng = np.random.default_rng(0)
    colour = colour_oracle_scores(targets, labels, rng).round()
    shape = shape_oracle_scores(targets, labels, rng).round()
    assert colour.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    assert shape.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]]
    # the bag oracle: colour and shape present, on any objects — image 3 holds a red ring and
    # a blue star, so "red star" and "blue ring" (absent) score 1 too: blind to binding only
    bag = bag_oracle_scores(targets, labels, rng).round()
    assert bag.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert attribute_targets(targets, labels, "shape").tolist() == [[1, 0], [0, 1], [1, 1]]
    assert macro_ap(targets, targets.astype(float)) == 1.0
    # a linearly separable attribute is found by the probe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = np.stack([(x[:, 0] > 0).numpy(), (x[:, 1] > 0.5).numpy()], 1).astype(np.float32)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) > 0.95


def test_shape_ap_names_the_shapes_the_features_miss():
    """Features that hold "star" (and noise) but not "ring": the star probe is near 1, the
    ring probe near chance (its AP about the ring's prevalence)."""
    labels = ["red star", "red ring", "blue star", "blue ring"]
    rng = np.random.default_rng(1)
    targets = (rng.random((800, 4)) < 0.35).astype(np.int8)
    star = attribute_targets(targets, labels, "shape")[:, 0]
    x = torch.from_numpy(np.stack([star * 2.0 - 1.0, rng.standard_normal(800), rng.standard_normal(800)], 1)).float()
    ap = shape_ap(x[:600], targets[:600], x[600:], targets[600:], labels)
    ring_rate = attribute_targets(targets[600:], labels, "shape")[:, 1].mean()
    assert list(ap) == ["star", "ring"]
    assert ap["star"] > 0.99 and abs(ap["ring"] - ring_rate) < 0.15


def test_shipped_recipe_trains_deterministically_and_loads(tmp_path):
    """``sigrl world pretrain``'s function on a tiny budget: the loss falls from ~log(B),
    two runs with the same spec give the same losses and weights, and the result loads
    through the backbone path with the corpus's own normalisation."""
    spec = ship.ShipSpec(n_images=96, steps=12, schedule_steps=12, warmup=2, batch_size=32, checkpoint_every=6,
                         twin_steps=0)
    a = ship.train_world_model(tmp_path / "a", spec, quiet=True)
    b = ship.train_world_model(tmp_path / "b", spec, quiet=True)
    assert len(a["losses"]) == 12 and a["losses"] == b["losses"]
    assert abs(a["losses"][0] - np.log(32)) < 0.5 and np.isfinite(a["final_loss"])
    assert np.mean(a["losses"][-4:]) < a["losses"][0] - 0.4  # it learns: below its start (and log 32)
    assert ship.sha256_file(tmp_path / "a" / "world.safetensors") == ship.sha256_file(tmp_path / "b" / "world.safetensors")
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step-000006.safetensors",
                                                                                 "step-000012.safetensors"]
    cfg = json.loads((tmp_path / "a" / "world.json").read_text())
    images, _ = ship.draw_corpus(96)
    x = images.float().div(255.0)
    assert cfg["preprocess_cfg"]["mean"] == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    backbone = load_backbone(str(tmp_path / "a" / "world.json"), str(tmp_path / "a" / "world.safetensors"))
    with torch.no_grad():
        g, local = backbone.encode_images(torch.zeros(2, 3, 96, 96))
    assert g.shape == (2, 128) and local.shape == (2, 64, 128)


def test_roc_auc_counts_the_pairs_ranked_right():
    """roc_auc against its definition: the share of (positive, negative) pairs with the
    positive scored higher, ties counting 1/2 (scores on a coarse grid, so ties occur)."""
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 70).astype(float) - 1
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert roc_auc(pos, neg) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0


def test_shape_auc_by_size_finds_the_small_instances_a_probe_misses():
    """A probe that sees shape 0 only when it is large: AUC near 1 in the large bin, near
    1/2 in the small one; shape 1, seen at every size, near 1 in both."""
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random((n, 2)) < 0.4).astype(np.int8)
    size = np.where(y == 1, rng.uniform(5, 20, (n, 2)), 0.0)
    scores = rng.standard_normal((n, 2)) * 0.3
    scores[:, 0] += 3.0 * ((y[:, 0] == 1) & (size[:, 0] >= 12))
    scores[:, 1] += 3.0 * y[:, 1]
    out = shape_auc_by_size(y, scores, size, [0.0, 12.0, 20.1], ["star", "ring"])
    assert list(out["star"]) == ["0-12px", "12-20.1px"]
    assert abs(out["star"]["0-12px"] - 0.5) < 0.06 and out["star"]["12-20.1px"] > 0.99
    assert min(out["ring"].values()) > 0.99
    assert shape_auc_by_size(y, scores, size, [30.0, 40.0], ["star", "ring"]) == {"star": {"30-40px": None},
                                                                                  "ring": {"30-40px": None}}


def test_mlp_probe_reads_what_a_linear_probe_cannot():
    """A target that is the XOR of two feature signs: no linear probe finds it (AP about
    its prevalence), the MLP probe does; on a linear target both do."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3000, 6, generator=g)
    xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).numpy()
    y = np.stack([xor, (x[:, 2] > 0).numpy()], 1).astype(np.float32)
    lin = linear_probe_scores(x[:2000], y[:2000], x[2000:])
    mlp = mlp_probe_scores(x[:2000], y[:2000], x[2000:])
    assert macro_ap(y[2000:, :1], lin[:, :1]) < 0.6 < 0.95 < macro_ap(y[2000:, :1], mlp[:, :1])
    assert macro_ap(y[2000:, 1:], lin[:, 1:]) > 0.97 and macro_ap(y[2000:, 1:], mlp[:, 1:]) > 0.95
    assert np.array_equal(mlp, mlp_probe_scores(x[:2000], y[:2000], x[2000:]))  # seeded


def test_binding_phase_trains_on_colour_twins_and_resumes_exactly(tmp_path):
    """Phase 2 of the recipe: its pairs are an image and its colour twin (same shapes, same
    colours, other compounds), captioned with every compound, so the two captions differ;
    running it from phase 1's saved checkpoint gives the weights of the run from scratch."""
    images, captions, objects = ship.draw_twin_corpus(16)
    world = gen.World(gen.corpus_spec())
    rebound = 0
    for m in range(0, 16, 2):
        a, b = objects[m], objects[m + 1]
        assert sorted(world.shape_of[a]) == sorted(world.shape_of[b])
        assert sorted(world.colour_of[a]) == sorted(world.colour_of[b])
        if set(a) != set(b):
            rebound += 1
            assert captions[m] != captions[m + 1] and not torch.equal(images[m], images[m + 1])
            for o in a:  # each object named with its colour
                assert world.labels[o] in captions[m]
    assert rebound >= 6
    half = ship.draw_twin_corpus(16, fraction=0.0)  # no twins: corpus images, their own captions
    plain, plain_caps, _ = gen.render_corpus(gen.corpus_spec(n_pretrain=16), 0, 16)
    assert torch.equal(half[0], torch.from_numpy(plain).permute(0, 3, 1, 2)) and half[1] == plain_caps

    spec = ship.ShipSpec(n_images=64, steps=10, schedule_steps=10, warmup=2, batch_size=16, checkpoint_every=10,
                         twin_steps=4, twin_images=32, twin_warmup=1, twin_lr=1e-3)
    full = ship.train_world_model(tmp_path / "full", spec, quiet=True)
    assert len(full["losses"]) == 14 and (tmp_path / "full" / "checkpoints" / "step-000010.safetensors").is_file()
    ship.train_world_model(tmp_path / "p1", spec, max_steps=10, quiet=True)
    resumed = ship.train_world_model(tmp_path / "p2", spec, quiet=True,
                                     resume_phase2=str(tmp_path / "p1" / "checkpoints" / "step-000010.safetensors"))
    assert len(resumed["losses"]) == 14 and resumed["losses"][10:] == full["losses"][10:]
    assert ship.sha256_file(tmp_path / "p2" / "world.safetensors") == ship.sha256_file(tmp_path / "full" / "world.safetensors")


def test_recipe_lr_warms_up_then_decays_in_each_phase():
    """The shipped recipe's schedule: phase 1 warms up linearly to ``lr`` and decays by a
    half cosine to 0 over ``schedule_steps``; phase 2 starts again from ``twin_lr /
    twin_warmup``, peaks at ``twin_lr`` and decays to 0 at its last step."""
    spec = ship.ShipSpec(steps=100, schedule_steps=100, warmup=10, lr=1e-3, twin_steps=40, twin_warmup=4, twin_lr=5e-4)
    lr = [ship._lr_at(k, spec) for k in range(ship.total_steps(spec))]
    assert len(lr) == 140
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3) and max(lr[:100]) == pytest.approx(1e-3)
    assert lr[55] == pytest.approx(0.5e-3, rel=1e-6)  # half-way through the cosine (step 55 of 10..100)
    assert all(a >= b for a, b in zip(lr[9:100], lr[10:100])) and lr[99] < 1e-6
    assert lr[100] == pytest.approx(5e-4 / 4) and lr[103] == pytest.approx(5e-4) and max(lr[100:]) == pytest.approx(5e-4)
    assert all(a >= b for a, b in zip(lr[103:], lr[104:])) and lr[139] < 2e-6
