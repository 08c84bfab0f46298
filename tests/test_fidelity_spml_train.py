"""The shipped VOC / COCO SPML configs through the trainer on a tiny generated dataset:
their heads give free sigmoid outputs, ROLE's estimator moves under its own lr, the
reference CLSL and SST recover labels, VLPL scores with label-only text and, optionally,
its own pseudo-label backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sigrl.config import load_config
from test_train import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fidelity-spml"), n_train=24, n_val=0, n_test=8, unseen=False,
                        seed=5)


def shipped(name: str, tmp_path: Path, data: Path, tiny_clip_files, *overrides: str):
    """configs/<name>_spml.yaml with only the data, backbone, budget and paths replaced."""
    base = [f"data.format=csv", f"data.root={data}", "data.options={}", f"backbone.model={tiny_clip_files[0]}",
            f"backbone.pretrained={tiny_clip_files[1]}", f"cache.dir={tmp_path.parent / 'fid-cache'}",
            f"output={tmp_path / 'run'}", "train.epochs=2", "train.batch_size=8", "eval.batch_size=16"]
    return load_config(Path(__file__).parents[1] / "configs" / f"{name}_spml.yaml", base + list(overrides))


def _state(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(sorted((run_dir / "state").glob("model*.safetensors"))[0]))


def _full_train_targets(data: Path, cfg):
    from sigrl.data.csvdata import load_csv_dataset

    return np.asarray(load_csv_dataset(data).train.targets)


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_shipped_heads_give_free_sigmoid_outputs(name, tmp_path, data, tiny_clip_files):
    from sigrl.model import build_head

    cfg = shipped(name, tmp_path, data, tiny_clip_files)
    assert cfg.head.options["combine"] == "mean" and cfg.head.options["learn_logit_scale"]

    class _Exp:  # what build_head reads
        class backbone:
            embed_dim = 16

        class train:
            labels = ["a", "b", "c"]
            targets = np.array([[1, 0, 0], [0, 1, 1]])

    head = build_head(cfg, _Exp)
    g, L = torch.randn(4, 16), torch.randn(4, 9, 16)
    T = torch.randn(3, 16)
    with torch.no_grad():  # a large scale and a positive bias put sigmoid above 0.5, a negative one below
        head.scale.log_scale.fill_(np.log(60.0))
        head.bias.bias.fill_(20.0)
        hi = torch.sigmoid(head(g, L, T, label_names=["a", "b", "c"]))
        head.bias.bias.fill_(-20.0)
        lo = torch.sigmoid(head(g, L, T, label_names=["a", "b", "c"]))
    assert (hi > 0.5).any() and (lo < 0.5).all() and hi.max() > 0.9


def test_role_estimator_moves_with_its_own_lr(tmp_path, data, tiny_clip_files):
    from sigrl.losses import build_loss
    from sigrl.train import train

    cfg = shipped("voc", tmp_path, data, tiny_clip_files, "data.observed=single_positive", "loss.name=role",
                  "loss.options.expected_num_pos=1.5")
    res = train(cfg, progress=False)
    assert np.isfinite(res.history[-1]["train/loss"])
    est = _state(Path(cfg.output))["loss.label_logits"]
    fresh = build_loss("role", num_images=est.shape[0], num_classes=est.shape[1], expected_num_pos=1.5)
    assert (est - fresh.label_logits.detach()).abs().max() > 1e-3  # the estimates trained
    opt = torch.load(sorted((Path(cfg.output) / "state").glob("optimizer*.bin"))[0], weights_only=True)
    groups = {g.get("name", "head"): g for g in opt["param_groups"]}
    assert groups["role_estimator"]["initial_lr"] == pytest.approx(10 * cfg.train.lr)
    assert groups["role_estimator"]["weight_decay"] == 0.0
    assert groups["head"]["initial_lr"] == pytest.approx(cfg.train.lr)
    assert groups["head"]["weight_decay"] == pytest.approx(cfg.train.weight_decay)


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_reference_sst_recovers_labels(name, tmp_path, data, tiny_clip_files):
    from sigrl.train import train

    cfg = shipped(name, tmp_path, data, tiny_clip_files, "data.observed=partial_sst", "data.proportion=0.5",
                  "loss.name=sst", "loss.options.generate_label_epoch=1", "loss.options.hidden_dim=8",
                  "loss.options.out_dim=8", "loss.options.num_exemplars=4",
                  # 2 epochs of a tiny random model: the margins start below the reference's 0.95
                  "loss.options.intra_margin=0.6", "loss.options.inter_margin=0.85")
    res = train(cfg, progress=False)
    assert np.isfinite(res.history[-1]["train/loss"])
    recovered = _state(Path(cfg.output))["loss.recovered"]
    assert int(recovered.sum()) >= 1


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_reference_clsl_recovers_labels(name, tmp_path, data, tiny_clip_files):
    from sigrl.data import observed as obs
    from sigrl.train import train

    cfg = shipped(name, tmp_path, data, tiny_clip_files, "data.observed=partial_sst", "data.proportion=0.5",
                  "loss.name=clsl")
    res = train(cfg, progress=False)
    assert np.isfinite(res.history[-1]["train/loss"])
    filled = _state(Path(cfg.output))["loss.filled"]
    full = _full_train_targets(data, cfg)
    observed = obs.partial(full, 0.5, seed=cfg.data.seed, mode="sst")
    unknown = torch.as_tensor(observed == 0)
    assert filled.shape == unknown.shape
    assert torch.isnan(filled[~unknown]).all() and not torch.isnan(filled[unknown]).any()
    hidden_pos = unknown & torch.as_tensor(full == 1)
    assert int(((filled > 0.5) & hidden_pos).sum()) >= 1  # a hidden positive filled as positive


def _live_global(data: Path, backbone) -> torch.Tensor:
    import csv

    from sigrl.images import load_image

    with open(data / "train.csv", newline="") as f:
        paths = [row["image"] for row in csv.DictReader(f)]
    pixels = torch.stack([backbone.preprocess(load_image(data / p)) for p in paths])
    with torch.no_grad():
        return torch.nn.functional.normalize(backbone.encode_images(pixels)[0].float(), dim=-1)


def _threshold(cos: torch.Tensor) -> float:
    flat = np.sort(cos.flatten().numpy())
    lo, hi = len(flat) // 4, 3 * len(flat) // 4
    i = lo + int(np.argmax(np.diff(flat[lo:hi])))
    return float(flat[i] + flat[i + 1]) / 2


@pytest.mark.parametrize("own_backbone", [False, True])
def test_vlpl_label_only_text_and_own_backbone(own_backbone, tmp_path, data, tiny_clip_files, tiny_backbone):
    """VLPL's rule (mvrl/VLPL models.py): normalised image embedding of the pseudo-label
    backbone . label-only text features; here thresholded without the softmax so the test
    can place the threshold in a gap."""
    from conftest import save_tiny_clip

    from sigrl.backbones import load_backbone
    from sigrl.data import observed as obs
    from sigrl.data.csvdata import load_csv_dataset
    from sigrl.prompts import embed_labels
    from sigrl.train import train

    ds = load_csv_dataset(data)
    labels = list(ds.seen)
    extra = []
    scorer = tiny_backbone
    if own_backbone:
        files = save_tiny_clip(tmp_path / "pl_clip", seed=7)
        scorer = load_backbone(str(files[0]), str(files[1]))
        extra = [f"loss.options.pseudo_backbone={{model: {files[0]}, pretrained: {files[1]}}}"]
    text = torch.nn.functional.normalize(embed_labels(scorer, labels, "{}").float(), dim=-1)
    cos = _live_global(data, scorer) @ text.t()
    thr = _threshold(cos)
    cfg = shipped("voc", tmp_path, data, tiny_clip_files, "data.observed=single_positive", "loss.name=vlpl",
                  "loss.options.temperature=null", f"loss.options.pos_threshold={thr}", "train.epochs=1", *extra)
    train(cfg, progress=False)
    stored = _state(Path(cfg.output))["loss.pseudo_labels"].to(torch.int64)
    observed = torch.as_tensor(obs.single_positive(ds.train.targets, seed=cfg.data.seed), dtype=torch.int64)
    expected = torch.where(observed == 0, (cos > thr).to(torch.int64), observed)
    assert torch.equal(stored, expected)
    # the rule is not the prompt-averaged one of text=prompts
    prompted = torch.nn.functional.normalize(embed_labels(scorer, labels, "photo").float(), dim=-1)
    assert not torch.allclose(text, prompted, atol=1e-4)


@pytest.mark.parametrize("loss", ["sst", "clsl"])
def test_per_step_losses_resume_like_an_uninterrupted_run(loss, tmp_path, data, tiny_clip_files):
    """Their learnt parts and buffers (co-occurrence branch, exemplar memory, soft labels)
    are training state: stop after one epoch + --resume gives the uninterrupted run."""
    from sigrl.train import train

    extra = ["data.observed=partial_sst", "data.proportion=0.5", f"loss.name={loss}"]
    if loss == "sst":
        extra += ["loss.options.generate_label_epoch=1", "loss.options.hidden_dim=8", "loss.options.out_dim=8",
                  "loss.options.num_exemplars=4", "loss.options.inter_margin=0.85"]
    full = train(shipped("voc", tmp_path / "a", data, tiny_clip_files, *extra), progress=False)
    cfg = shipped("voc", tmp_path / "b", data, tiny_clip_files, *extra)
    train(cfg, stop_after=1, progress=False)
    again = train(cfg, resume=True, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in h]  # noqa: E731
    assert strip(again.history) == strip(full.history)


@pytest.mark.skipif(__import__("shutil").which("torchrun") is None
                    and not (Path(__import__("sys").executable).with_name("torchrun")).is_file(),
                    reason="torchrun is not installed")
def test_sst_memory_holds_the_whole_batch_with_two_processes(tmp_path, data, tiny_clip_files):
    """Each process sees half of a batch; the exemplar memory gathers both halves (rank
    order = the batch's order), so the 2-process memory fills like the 1-process one and
    is the same on every rank (the recovered labels cover every image)."""
    import json
    import os
    import subprocess
    import sys

    from sigrl.train import train

    extra = ["data.observed=partial_sst", "data.proportion=0.5", "loss.name=sst", "loss.options.hidden_dim=8",
             "loss.options.out_dim=8", "loss.options.num_exemplars=40", "train.batch_size=4",
             "loss.options.generate_label_epoch=1", "loss.options.inter_margin=0.85"]
    one = shipped("voc", tmp_path / "one", data, tiny_clip_files, *extra)
    train(one, progress=False)
    from sigrl.config import config_to_dict

    y = tmp_path / "two.yaml"
    d = config_to_dict(shipped("voc", tmp_path / "two", data, tiny_clip_files, *extra))
    y.write_text(json.dumps(d))
    exe = Path(sys.executable).with_name("torchrun")
    runner = str(exe) if exe.is_file() else "torchrun"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([runner, "--standalone", "--nproc_per_node", "2", "-m", "sigrl", "train", str(y), "-q"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = _state(Path(one.output))["loss.memory"]
    m2 = _state(Path(d["output"]))["loss.memory"]
    filled = lambda m: (m.abs().sum(-1) > 0).sum(1)  # noqa: E731  (slots in use per class)
    assert torch.equal(filled(m1), filled(m2)) and int(filled(m1).sum()) > 0
