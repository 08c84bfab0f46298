"""Hostile files: pickles and torch checkpoints that try to run code, garbage or truncated
weights, weights of another model, corrupt run directories, and list files whose paths
try to leave the dataset root. Each must be refused with one line naming the file,
exit code 2 (or a named problem and exit 1 when the rest of the dataset is usable), and
nothing it asks for may run (a marker file it would create must not exist)."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from sigrl.cli import main

from conftest import TINY_CLIP_CFG, save_tiny_clip
from test_data_check import jpg, make_csv, png
from test_data_nuswide import make_biam


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, *words: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


class RunsCommand:
    """Unpickling this runs a shell command (the classic __reduce__ gadget)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def gadget_pickles(marker: Path) -> dict[str, bytes]:
    import subprocess

    touch = f"touch {marker}"
    out = {f"os.system protocol {p}": pickle.dumps({"img_names": [RunsCommand(os.system, touch)]}, protocol=p)
           for p in (0, 2, 4, 5)}
    out["builtins.exec"] = pickle.dumps(RunsCommand(exec, f"open({str(marker)!r}, 'w').close()"))
    out["subprocess.Popen"] = pickle.dumps([RunsCommand(subprocess.Popen, ["touch", str(marker)])])
    # hand-written opcodes: GLOBAL+REDUCE and INST, as an attacker would write them
    out["raw GLOBAL opcode"] = b"cos\nsystem\n(S'" + touch.encode() + b"'\ntR."
    out["raw INST opcode"] = b"(S'" + touch.encode() + b"'\nios\nsystem\n."
    out["EXT1 extension code"] = b"\x80\x02\x82\x01."
    return out


# ====================================================================== pickles (NUS-WIDE lists)


@pytest.fixture
def nus_root(tmp_path):
    pytest.importorskip("h5py")
    root = make_biam(tmp_path / "nus")
    for rel in ("actor/0001_11.jpg", "actor/0003_33.jpg", "airport_terminal/0002_22.jpg"):
        jpg(root / "Flickr" / rel)
    return root


def test_nus_name_pickles_that_run_code_are_refused(nus_root, tmp_path, capsys):
    marker = tmp_path / "pwned"
    clean = (nus_root / "img_names.pkl").read_bytes()
    assert run(["data", "check", "nuswide", str(nus_root), "--no-progress"], capsys)[0] == 0
    for kind, data in gadget_pickles(marker).items():
        (nus_root / "img_names.pkl").write_bytes(data)
        code, out, err = run(["data", "check", "nuswide", str(nus_root), "--no-progress"], capsys)
        assert code == 2, kind
        line = one_line_error(err, "img_names.pkl")
        if kind == "EXT1 extension code":
            assert "not a readable pickle" in line
        else:
            assert "refused to load pickle" in line and "asks for the global" in line, (kind, line)
        assert not marker.exists(), kind
    (nus_root / "img_names.pkl").write_bytes(clean)
    assert run(["data", "check", "nuswide", str(nus_root), "--no-progress"], capsys)[0] == 0


def test_nus_hostile_pickle_through_bench(nus_root, tiny_clip_files, tmp_path, capsys):
    marker = tmp_path / "pwned_bench"
    (nus_root / "test_img_names.pkl").write_bytes(
        pickle.dumps({"img_names": [RunsCommand(os.system, f"touch {marker}")]}, protocol=4))
    cfg, w = map(str, tiny_clip_files)
    code, out, err = run(["bench", "nuswide-zsl", "--root", str(nus_root), "--model", cfg, "--pretrained", w,
                          "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and not marker.exists()
    one_line_error(err, "test_img_names.pkl", "posix.system")
    assert not (tmp_path / "out" / "results.md").exists()


def test_nus_names_that_climb_out_of_the_root(nus_root, capsys):
    names = ["actor_0001_11.jpg", "../../../etc_0001_1.jpg", "..\\..\\x_0002_2.jpg", "a/../../../b_0003_3.jpg"]
    (nus_root / "img_names.pkl").write_bytes(pickle.dumps({"img_names": names}))
    code, out, err = run(["data", "check", "nuswide", str(nus_root), "--no-progress", "--json"], capsys)
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 1, rep
    refused = [p for p in rep["problems"] if "escapes the dataset root" in p]
    assert len(refused) == 3 and all("img_names.pkl[" in p for p in refused)


# ====================================================================== torch checkpoints as --pretrained


def tag(capsys, image_dir, *args):
    return run(["tag", str(image_dir), "--labels", "a,b", *args], capsys)


@pytest.mark.parametrize("name", ["evil.pt", "evil.bin", "evil.pth", "evil_no_suffix"])
def test_pt_checkpoint_that_runs_code_is_refused(name, tiny_clip_files, image_dir, tmp_path, capsys):
    marker = tmp_path / "pwned_pt"
    sd = load_file(str(tiny_clip_files[1]))
    sd["logit_scale"] = RunsCommand(os.system, f"touch {marker}")  # a real state dict, one poisoned entry
    torch.save(sd, tmp_path / name)
    code, out, err = tag(capsys, image_dir, "--model", str(tiny_clip_files[0]), "--pretrained", str(tmp_path / name))
    assert code == 2 and out == "" and not marker.exists()
    one_line_error(err, str(tmp_path / name), "refused: the file asks to run code")
    # the same weights without the poisoned entry load (weights_only=True admits tensors)
    sd["logit_scale"] = load_file(str(tiny_clip_files[1]))["logit_scale"]
    torch.save(sd, tmp_path / name)
    code, out, err = tag(capsys, image_dir, "--model", str(tiny_clip_files[0]), "--pretrained", str(tmp_path / name))
    assert code == 0, err


def test_pt_refusal_says_why_and_does_not_suggest_unsafe_load(tiny_clip_files, image_dir, tmp_path, capsys):
    torch.save({"x": RunsCommand(os.system, "true")}, tmp_path / "evil.pt")
    code, _, err = tag(capsys, image_dir, "--model", str(tiny_clip_files[0]), "--pretrained", str(tmp_path / "evil.pt"))
    assert code == 2
    line = one_line_error(err, "evil.pt")
    assert "weights_only` set to `False" not in line and "weights_only=False" not in line
    assert "run code" in line or "refused" in line


def safetensors_variants(tmp_path: Path, real: Path) -> dict[str, Path]:
    blob = real.read_bytes()
    out = {}

    def w(name, data):
        out[name] = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        out[name].write_bytes(data)

    w("random bytes", os.urandom(4096))
    w("empty file", b"")
    w("truncated half", blob[: len(blob) // 2])
    w("header length 2^60", struct.pack("<Q", 2 ** 60) + b"{}")
    header = b'{"w": {"dtype": "F32", "shape": [1000000000, 1000], "data_offsets": [0, 4]}}'
    w("header claims 4 TB tensor", struct.pack("<Q", len(header)) + header + b"\0" * 4)
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}' + b" " * 8
    w("valid file, wrong tensors", struct.pack("<Q", len(header)) + header + b"\0" * 8)
    torch.save({"x": torch.zeros(2)}, tmp_path / "torch_zip")
    w("torch zip named .safetensors", (tmp_path / "torch_zip").read_bytes())
    return out


def test_garbage_and_truncated_weights_are_refused(tiny_clip_files, image_dir, tmp_path, capsys):
    cfg, real = tiny_clip_files
    for kind, path in safetensors_variants(tmp_path, real).items():
        code, out, err = tag(capsys, image_dir, "--model", str(cfg), "--pretrained", str(path))
        assert code == 2 and out == "", (kind, err)
        line = one_line_error(err, str(path))
        assert "cannot read checkpoint" in line or "do not fit" in line, (kind, line)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_checkpoint_of_another_embedding_width_is_refused(fmt, tiny_clip_files, image_dir, tmp_path, capsys):
    other = json.loads(json.dumps(TINY_CLIP_CFG))
    other["embed_dim"] = 32
    _, weights = save_tiny_clip(tmp_path / "other", cfg=other)
    if fmt == "pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in load_file(str(weights)).items()}},
                   tmp_path / "other.pt")
        weights = tmp_path / "other.pt"
    code, out, err = tag(capsys, image_dir, "--model", str(tiny_clip_files[0]), "--pretrained", str(weights))
    assert code == 2 and out == ""
    one_line_error(err, str(weights), "do not fit")


def test_weights_holding_nan_are_refused_before_tagging(tiny_clip_files, image_dir, tmp_path, capsys):
    """A tampered or corrupt checkpoint with NaN in it would give NaN scores (and invalid
    JSON) for every image with exit 0."""
    for key in ("visual.proj", "text_projection"):
        sd = load_file(str(tiny_clip_files[1]))
        sd[key][0, 0] = float("nan")
        save_file(sd, str(tmp_path / "nan.safetensors"))
        code, out, err = tag(capsys, image_dir, "--model", str(tiny_clip_files[0]),
                             "--pretrained", str(tmp_path / "nan.safetensors"), "--format", "json")
        assert code == 2 and out == "", key
        one_line_error(err, "nan.safetensors", "NaN/inf", "corrupt")


# ====================================================================== run directories as --checkpoint


GOOD_INFO = {"head_class": "SigRLHead", "head_config": {}, "labels": ["a"], "backbone": {}, "embed_dim": 64,
             "preprocess": {}, "prompts": {"name": "photo", "templates": ["a photo of a {}."]}}


def make_run(tmp_path: Path, info, head: bytes | None = save({"w": torch.zeros(2)})) -> Path:
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    if info is not None:
        (d / "run.json").write_text(info if isinstance(info, str) else json.dumps(info))
    if head is not None:
        (d / "head.safetensors").write_bytes(head)
    return d


@pytest.mark.parametrize("kind,info,head,words", [
    ("missing directory", "absent", None, "run directory not found"),
    ("no run.json", None, None, "not a sigrl run"),
    ("run.json half-written", json.dumps(GOOD_INFO)[:30], None, "corrupt run file"),
    ("run.json a list", "[1, 2]", None, "corrupt run file"),
    ("run.json lacks keys", '{"labels": []}', None, "missing key"),
    ("head file missing", GOOD_INFO, b"", "head.safetensors missing"),
    ("head file garbage", GOOD_INFO, b"\x00" * 50, "corrupt weights file"),
    ("head sha256 mismatch", {**GOOD_INFO, "head_sha256": "0" * 64}, save({"w": torch.zeros(2)}), "do not match"),
    ("unknown head class", {**GOOD_INFO, "head_class": "os.system"}, save({"w": torch.zeros(2)}), "unknown head class"),
])
def test_corrupt_run_directories_are_refused(kind, info, head, words, image_dir, tmp_path, capsys):
    if info == "absent":
        d = tmp_path / "nowhere"
    else:
        d = make_run(tmp_path, info, head if head != b"" else None)
    code, out, err = tag(capsys, image_dir, "--checkpoint", str(d))
    assert code == 2 and out == ""
    one_line_error(err, words)


CHECKPOINT_BUG = "sigrl/checkpoint.py load_run (not ours to edit)"


@pytest.mark.parametrize("kind,info", [
    pytest.param("run.json nested 100k deep", "[" * 100_000),
    pytest.param("head_config is a list", {**GOOD_INFO, "head_config": [1]}),
    pytest.param("embed_dim not a number", {**GOOD_INFO, "embed_dim": "wide"}),
])
def test_malformed_run_json_is_one_line(kind, info, image_dir, tmp_path, capsys):
    d = make_run(tmp_path, info)
    code, out, err = tag(capsys, image_dir, "--checkpoint", str(d))
    assert code == 2
    one_line_error(err, "run.json")


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"embed_dim": "\xe9"}',
                                     b'{"embed_dim": 64, "vision_cfg": "big", "text_cfg": {}}'])
def test_malformed_model_config_is_one_line(content, tiny_clip_files, image_dir, tmp_path, capsys):
    (tmp_path / "model.json").write_bytes(content)
    code, _, err = tag(capsys, image_dir, "--model", str(tmp_path / "model.json"),
                       "--pretrained", str(tiny_clip_files[1]))
    assert code == 2
    one_line_error(err, "model.json")


# ====================================================================== Hugging Face directory with pytorch_model.bin


@pytest.fixture(scope="module")
def hf_clip_bin_dir(tmp_path_factory):
    """A tiny random Hugging Face CLIPModel directory with tokenizer files, saved as
    model.safetensors (the tests swap it for a pytorch_model.bin)."""
    from test_backbones import _write_hf_tokenizer_files, save_tiny_hf_clip

    d = save_tiny_hf_clip(tmp_path_factory.mktemp("hf_clip_bin"))
    _write_hf_tokenizer_files(d)
    return d


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain pickle", "second shard"])
def test_hf_directory_with_hostile_pytorch_model_bin(kind, hf_clip_bin_dir, image_dir, tmp_path, capsys):
    import shutil

    from sigrl.backbones import load_backbone
    from sigrl.errors import CheckpointError

    d = tmp_path / "hf"
    shutil.copytree(hf_clip_bin_dir, d)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()  # transformers now loads the .bin
    marker = tmp_path / "pwned_hf"
    gadget = RunsCommand(os.system, f"touch {marker}")
    evil = d / "pytorch_model.bin"
    if kind == "zip":  # torch.save's format since 1.6: a real state dict with one poisoned entry
        torch.save({**sd, "logit_scale": gadget}, evil)
    elif kind == "legacy":
        torch.save({**sd, "logit_scale": gadget}, evil, _use_new_zipfile_serialization=False)
    elif kind == "plain pickle":
        evil.write_bytes(pickle.dumps({"logit_scale": gadget}, protocol=2))
    else:  # a sharded checkpoint: the first shard is clean, the second runs code
        keys = sorted(sd)
        half = {k: sd[k] for k in keys[: len(keys) // 2]}
        evil = d / "pytorch_model-00002-of-00002.bin"
        torch.save(half, d / "pytorch_model-00001-of-00002.bin")
        torch.save({**{k: sd[k] for k in keys[len(keys) // 2:]}, "logit_scale": gadget}, evil)
        (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
            k: ("pytorch_model-00001-of-00002.bin" if k in half else evil.name) for k in keys}}))
    code, out, err = tag(capsys, image_dir, "--model", str(d))
    assert code == 2 and out == "" and not marker.exists()
    line = one_line_error(err, str(evil))
    assert "refused: the file asks to run code" in line, line
    assert "weights_only` set to `False" not in line and "weights_only=False" not in line
    with pytest.raises(CheckpointError, match="asks to run code"):
        load_backbone(str(d))
    assert not marker.exists()
    # the same weights as a clean pytorch_model.bin load, and give the safetensors model's embeddings
    for p in d.glob("pytorch_model*"):
        p.unlink()
    torch.save(sd, d / "pytorch_model.bin")
    from_bin = load_backbone(str(d))
    from_safetensors = load_backbone(str(hf_clip_bin_dir))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for a, b in zip(from_bin.encode_images(pixels), from_safetensors.encode_images(pixels)):
        assert torch.equal(a, b)
    code, out, err = tag(capsys, image_dir, "--model", str(d))
    assert code == 0 and not marker.exists(), err


# ====================================================================== paths that leave the dataset root


def test_csv_paths_outside_the_root_are_refused_even_when_the_file_exists(tmp_path, capsys):
    root = make_csv(tmp_path / "ds", n_train=2, n_test=2)
    outside = png(tmp_path / "outside.png")  # a real image the list tries to reach
    escapes = ["../outside.png", "img/../../outside.png", "..\\outside.png", "./img/../../outside.png"]
    absolute = [str(outside), "C:\\outside.png", "\\\\server\\share\\outside.png", "//server/outside.png"]
    rows = "".join(f'"{p}",red\n' for p in escapes + absolute)
    (root / "train.csv").write_text("image,labels\nimg/tr0.png,red\n" + rows + "img/tr1.png,red\n")
    code, out, err = run(["data", "check", "csv", str(root), "--no-progress", "--json"], capsys)
    rep = json.loads(out)
    assert code == 1, rep
    assert rep["train_images"] == 2 and rep["listed_images"]["train"] == 2
    src = root / "train.csv"
    for n in range(3, 3 + len(escapes)):
        assert any(p.startswith(f"{src}:{n}: ") and "escapes the dataset root" in p for p in rep["problems"]), n
    for n in range(3 + len(escapes), 3 + len(escapes) + len(absolute)):
        assert any(p.startswith(f"{src}:{n}: ") and "absolute path" in p for p in rep["problems"]), n
    assert len(rep["problems"]) == len(escapes) + len(absolute)
    # inside the root, a path may wander and come back
    (root / "train.csv").write_text("image,labels\nimg/../img/./tr0.png,red\nimg/tr1.png,red\n")
    code, out, _ = run(["data", "check", "csv", str(root), "--no-progress", "--json"], capsys)
    assert code == 0 and json.loads(out)["train_images"] == 2


def test_symlinked_image_folder_inside_the_root_is_followed(tmp_path, capsys):
    """A dataset may keep its images elsewhere and link them in (documented in
    sigrl/safeio.py): the link is followed, while the list itself still cannot name a
    path outside the root."""
    import shutil

    root = make_csv(tmp_path / "ds", n_train=3, n_test=2)
    store = tmp_path / "big-disk" / "images"
    shutil.move(str(root / "img"), str(store))
    os.symlink(store, root / "img", target_is_directory=True)
    code, out, err = run(["data", "check", "csv", str(root), "--no-progress", "--json"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["problems"] == [], out + err
    assert rep["train_images"] == 3 and rep["test_images"] == 2 and rep["checked_images"] == 5
    (root / "train.csv").write_text("image,labels\nimg/tr0.png,red\n../big-disk/images/tr1.png,red\n")
    code, out, _ = run(["data", "check", "csv", str(root), "--no-progress", "--json"], capsys)
    rep = json.loads(out)
    assert code == 1 and rep["train_images"] == 1
    assert any("escapes the dataset root" in p for p in rep["problems"])
