"""What a world model has learnt, measured without training a head.

* linear probes on frozen global features: does the image embedding tell which colours /
  which shapes an image holds (multi-label, macro mAP over the attributes)?
* attribute oracles: a label scores 1 when the image holds its colour (colour oracle) or
  its shape (shape oracle) — perfect on one attribute, blind to the other and to binding;
  or both, on any objects (bag oracle) — perfect on both, blind to binding only.
* zero-shot matching on the unseen labels (their own pass) with local + global, global
  alone and local alone, beside the oracles.

:func:`model_report` draws a labelled world in memory (no files) and reports all of it;
the manifest of the shipped model records its output.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..metrics import mean_average_precision

__all__ = ["attribute_targets", "colour_oracle_scores", "shape_oracle_scores", "bag_oracle_scores", "linear_probe",
           "linear_probe_scores", "mlp_probe_scores", "shape_ap", "roc_auc", "shape_auc_by_size",
           "shape_readouts", "probe_figures", "macro_ap", "model_report"]


def attribute_targets(targets: np.ndarray, labels: list[str], which: str, names: list[str] | None = None) -> np.ndarray:
    """(N, A) 0/1: image holds an object of attribute a (``which``: "colour" | "shape";
    a label is "<colour> <shape>"; ``names``: the attribute values, default those of ``labels``)."""
    pos = 0 if which == "colour" else 1
    if names is None:
        names = list(dict.fromkeys(l.split()[pos] for l in labels))
    present = np.asarray(targets) == 1
    out = np.zeros((present.shape[0], len(names)), dtype=np.float32)
    for a, name in enumerate(names):
        cols = [j for j, l in enumerate(labels) if l.split()[pos] == name]
        out[:, a] = present[:, cols].any(axis=1)
    return out


def _oracle(targets: np.ndarray, labels: list[str], rng: np.random.Generator, pos: int) -> np.ndarray:
    words = [l.split()[pos] for l in labels]
    present = np.asarray(targets) == 1
    scores = np.zeros(present.shape, dtype=np.float32)
    for w in set(words):
        cols = [j for j, x in enumerate(words) if x == w]
        scores[:, cols] = present[:, cols].any(axis=1)[:, None]
    return scores + 1e-3 * rng.random(scores.shape, dtype=np.float32)


def colour_oracle_scores(targets: np.ndarray, labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """Label "red star" scores 1 when the image holds anything red (from the true labels),
    else 0, plus a little noise to break ties: perfect colour, no shape."""
    return _oracle(targets, labels, rng, 0)


def shape_oracle_scores(targets: np.ndarray, labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """Label "red star" scores 1 when the image holds any star: perfect shape, no colour."""
    return _oracle(targets, labels, rng, 1)


def bag_oracle_scores(targets: np.ndarray, labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """Label "red star" scores 1 when the image holds something red *and* some star, on the
    same object or not: perfect colour and shape, no binding — a bag of attributes."""
    present = np.asarray(targets) == 1
    colours, shapes = [l.split()[0] for l in labels], [l.split()[1] for l in labels]
    has = {}
    for pos, words in ((0, colours), (1, shapes)):
        for w in set(words):
            has[pos, w] = present[:, [j for j, x in enumerate(words) if x == w]].any(axis=1)
    scores = np.stack([has[0, c] & has[1, s] for c, s in zip(colours, shapes)], 1).astype(np.float32)
    return scores + 1e-3 * rng.random(scores.shape, dtype=np.float32)


def macro_ap(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean over columns with at least one positive of the average precision (sigrl.metrics,
    ties grouped as scikit-learn does; every other entry counts as a negative)."""
    t = np.where(np.asarray(targets) == 1, 1, -1).astype(np.int8)
    return float(mean_average_precision(np.asarray(scores, dtype=np.float32), t, empty_class="skip"))


def linear_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, *,
                 weight_decay: float = 1e-4, iters: int = 200) -> float:
    """Test macro mAP of a multi-label logistic-regression probe (full-batch L-BFGS, BCE)
    trained on (train_x, train_y); features are standardised with the train statistics."""
    return macro_ap(test_y, linear_probe_scores(train_x, train_y, test_x, weight_decay=weight_decay, iters=iters))


def _standardise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets standardised with the train statistics (per dimension)."""
    x = train_x.float()
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    return (x - mu) / sd, (test_x.float() - mu) / sd


def linear_probe_scores(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, *,
                        weight_decay: float = 1e-4, iters: int = 200) -> np.ndarray:
    """The probe of :func:`linear_probe`: its test logits (N_test, A)."""
    x, xt = _standardise(train_x, test_x)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lin = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin(xt).numpy()


def mlp_probe_scores(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, *, hidden: int = 512,
                     steps: int = 1500, batch: int = 256, lr: float = 1e-3, weight_decay: float = 1e-2,
                     seed: int = 0) -> np.ndarray:
    """Test logits (N_test, A) of a one-hidden-layer MLP probe (D -> hidden -> A, GELU; AdamW
    on BCE, ``steps`` minibatches of ``batch``), features standardised with the train
    statistics: what a non-linear readout finds that :func:`linear_probe_scores` misses."""
    x, xt = _standardise(train_x, test_x)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, y.shape[1]))
        opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(mlp(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return mlp(xt).numpy()


def _attribute_probe(train_x, train_targets, test_x, test_targets, labels, test_labels, which: str):
    """(attribute names, test targets (N_test, A), probe test logits (N_test, A)) of the
    linear probe for ``which`` ("colour" | "shape")."""
    pos = 0 if which == "colour" else 1
    names = list(dict.fromkeys(l.split()[pos] for l in test_labels))
    scores = linear_probe_scores(train_x, attribute_targets(train_targets, labels, which, names), test_x)
    return names, attribute_targets(test_targets, test_labels, which, names), scores


def _per_column_ap(names, test_y, scores) -> dict:
    return {n: round(macro_ap(test_y[:, k : k + 1], scores[:, k : k + 1]), 4) for k, n in enumerate(names)}


def shape_ap(train_x, train_targets, test_x, test_targets, labels: list[str]) -> dict:
    """{shape: test AP} of the shape probe of :func:`probe_figures`, one entry per shape
    (which shapes the features miss; :func:`model_report` reports it from its own probe)."""
    return _per_column_ap(*_attribute_probe(train_x, train_targets, test_x, test_targets, labels, labels, "shape"))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive's score exceeds a negative's (ties count 1/2): ROC AUC,
    unlike AP blind to how many positives there are (Mann-Whitney U / (n_pos n_neg))."""
    import pandas as pd

    ranks = pd.Series(np.concatenate([positive, negative])).rank(method="average").to_numpy()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def shape_auc_by_size(test_y: np.ndarray, scores: np.ndarray, size: np.ndarray, edges: list[float],
                      names: list[str]) -> dict:
    """{shape: {"<lo>-<hi>px": ROC AUC}}: how well the shape probe ranks the images whose
    largest instance of a shape lies in each radius bin above the images without that shape
    — does the probe miss a shape's small instances? AUC, not AP, so that bins holding
    fewer positives are not marked down for it. ``test_y``, ``scores``, ``size``: (N, A)
    targets, probe logits and the largest radius (pixels) of each shape in each image (0
    when absent); ``edges``: K+1 bin edges; a bin without positives gives None."""
    out = {}
    for a, name in enumerate(names):
        neg = scores[test_y[:, a] == 0, a]
        row = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            pos = scores[(test_y[:, a] == 1) & (size[:, a] >= lo) & (size[:, a] < hi), a]
            row[f"{lo:g}-{hi:g}px"] = round(roc_auc(pos, neg), 4) if len(pos) and len(neg) else None
        out[name] = row
    return out


def probe_figures(train_x, train_targets, test_x, test_targets, labels: list[str],
                  test_labels: list[str] | None = None) -> dict:
    """{"colour": mAP, "shape": mAP} of linear probes on frozen global features; the
    targets' columns are ``labels`` (train) and ``test_labels`` (test, default the same)."""
    test_labels = labels if test_labels is None else test_labels
    return {which: round(macro_ap(*_attribute_probe(train_x, train_targets, test_x, test_targets, labels, test_labels,
                                                    which)[1:]), 4)
            for which in ("colour", "shape")}


def _draw(world, split: str, n: int):
    """(images (N, H, W, 3) uint8, targets (N, C) 0/1, radii (N, C): each label's radius in
    pixels, 0 when absent)."""
    imgs, targets = [], np.zeros((n, len(world.labels)), dtype=np.int8)
    radii = np.zeros((n, len(world.labels)), dtype=np.float32)
    for i in range(n):
        s = world.sample(split, i)
        imgs.append(s.image)
        targets[i, s.objects] = 1
        radii[i, s.objects] = s.radii
    return np.stack(imgs), targets, radii


@torch.no_grad()
def _encode(backbone, images: np.ndarray, batch: int = 128):
    cfg = backbone.preprocess_config
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    gs, ls = [], []
    for a in range(0, len(images), batch):
        x = torch.from_numpy(images[a : a + batch]).permute(0, 3, 1, 2).float().div_(255.0)
        g, l = backbone.encode_images((x - mean) / std)
        gs.append(g.half().float())
        ls.append(l.half().float())
    return torch.cat(gs), torch.cat(ls)


def shape_readouts(backbone, *, seed: int = 0, n_train: int = 8000, n_test: int = 1000) -> dict:
    """How much shape the frozen global embedding holds, read out several ways on the world
    of ``seed`` (test mAP over the shapes): the linear probe of :func:`model_report` fitted on
    2,000 and on ``n_train`` images, a linear probe on the compounds ("red star") whose
    shape score is the max over colours, and an MLP probe on ``n_train`` images. A gap
    between the linear and the MLP probe is shape the embedding holds non-linearly."""
    from .generator import World, WorldSpec

    world = World(WorldSpec(seed=seed))
    tr_img, tr_t, _ = _draw(world, "train", n_train)
    te_img, te_t, _ = _draw(world, "test", n_test)
    tr_g, te_g = _encode(backbone, tr_img)[0], _encode(backbone, te_img)[0]
    labels, names = world.labels, list(world.shapes)
    tr_y, te_y = (attribute_targets(t, labels, "shape", names) for t in (tr_t, te_t))
    compounds = linear_probe_scores(tr_g, tr_t, te_g)
    by_max = np.stack([compounds[:, world.shape_of == k].max(1) for k in range(len(names))], 1)
    out = {"world_seed": seed, "n_train": n_train, "n_test": n_test,
           "linear_2000": macro_ap(te_y, linear_probe_scores(tr_g[:2000], tr_y[:2000], te_g)),
           f"linear_{n_train}": macro_ap(te_y, linear_probe_scores(tr_g, tr_y, te_g)),
           f"compound_linear_{n_train}_max_over_colours": macro_ap(te_y, by_max),
           f"mlp_{n_train}": macro_ap(te_y, mlp_probe_scores(tr_g, tr_y, te_g))}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def model_report(backbone, *, seed: int = 0, n_train: int = 2000, n_test: int = 2000, prompts: str = "photo") -> dict:
    """Probes, oracles and zero-shot matching (unseen labels, own pass) of ``backbone`` on
    the labelled world of ``seed`` drawn in memory (train split for the probes' fit, test
    split for every figure)."""
    from ..prompts import load_prompts
    from ..scorer import Scorer
    from .generator import World, WorldSpec

    t0 = time.perf_counter()
    world = World(WorldSpec(seed=seed))
    tr_img, tr_t, _ = _draw(world, "train", n_train)
    te_img, te_t, te_r = _draw(world, "test", n_test)
    tr_g, tr_l = _encode(backbone, tr_img)
    te_g, te_l = _encode(backbone, te_img)
    labels, unseen = world.labels, world.unseen
    cols = [labels.index(u) for u in unseen]
    report = {"world_seed": seed, "n_train": n_train, "n_test": n_test,
              # the same probes on the patch tokens (B, P, D) pooled over P: what the local
              # features hold that the global embedding may not
              "probe_patches": {pool: probe_figures(f(tr_l), tr_t, f(te_l), te_t, labels)
                                for pool, f in (("mean", lambda l: l.mean(1)), ("max", lambda l: l.amax(1)))}}
    rng = np.random.default_rng(seed)
    yt = te_t[:, cols]
    zsl = {"random": macro_ap(yt, rng.random(yt.shape)),
           "colour_oracle": macro_ap(yt, colour_oracle_scores(te_t, labels, rng)[:, cols]),
           "shape_oracle": macro_ap(yt, shape_oracle_scores(te_t, labels, rng)[:, cols]),
           "bag_oracle": macro_ap(yt, bag_oracle_scores(te_t, labels, rng)[:, cols])}
    ps = load_prompts(prompts)
    for mode in ("local+global", "global", "local"):
        scorer = Scorer.clip(backbone, ps, mode=mode)
        with torch.no_grad():
            zsl[f"clip_{mode}"] = macro_ap(yt, scorer(te_g, te_l, unseen).numpy())
        if mode == "local+global":
            with torch.no_grad():
                report["gzsl_clip"] = round(macro_ap(te_t, scorer(te_g, te_l, labels).numpy()), 4)
    # the global probes, the shape probe trained once for its mAP, its AP per shape and its
    # ROC AUC per shape and object size (thirds of the drawn radius range; crowded images shrink
    # radii below its low end, kept in the first bin)
    _, colour_y, colour_scores = _attribute_probe(tr_g, tr_t, te_g, te_t, labels, labels, "colour")
    names, test_y, scores = _attribute_probe(tr_g, tr_t, te_g, te_t, labels, labels, "shape")
    report["probe"] = {"colour": round(macro_ap(colour_y, colour_scores), 4), "shape": round(macro_ap(test_y, scores), 4)}
    report["probe_shape_ap"] = _per_column_ap(names, test_y, scores)
    lo, hi = world.spec.radius_min * world.spec.image_size, world.spec.radius_max * world.spec.image_size
    edges = [0.0] + [round(lo + (hi - lo) * k / 3, 1) for k in (1, 2)] + [round(hi + 0.1, 1)]
    shape_size = np.stack([te_r[:, world.shape_of == world.shapes.index(n)].max(1) for n in names], 1)
    report["probe_shape_auc_by_size"] = shape_auc_by_size(test_y, scores, shape_size, edges, names)
    report["zsl"] = {k: round(v, 4) for k, v in zsl.items()}
    report["unseen_over_colour_oracle"] = round(zsl["clip_local+global"] / zsl["colour_oracle"], 3)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report
