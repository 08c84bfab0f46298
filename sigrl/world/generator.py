"""The embedded synthetic multi-label world (DESIGN.md section 6).

A seeded generator of small RGB images on textured noisy backgrounds. Each image holds
``min_objects..max_objects`` objects; an object is a colour x shape compound ("red star"),
and the compounds are the labels (8 colours x 6 shapes = 48 by default). Every image
belongs to one of ``n_scenes`` scene types; a scene has its own preference over colours,
shapes and compounds (and its own background tint and texture), so labels co-occur
non-uniformly. A seen/unseen split holds out ``unseen_fraction`` of the compounds such
that every colour and every shape still occurs among the seen labels: zero-shot
recognition of "red star" then needs "red" and "star" learnt from other compounds.

Pre-training images get one caption each, objects in random order with varied phrasing;
some captions name only the shapes ("two rings and a star") or only the colours
("something red and something blue"), so that the shape of an object is worth learning
(colour alone can reach a low contrastive loss, DESIGN.md section 6).

On disk (``generate_world``), the generic CSV dataset format::

    root/labels.txt        all labels, one per line (column order)
    root/unseen.txt        the unseen labels, one per line
    root/train.csv         header "image,labels"; image = path relative to root
    root/val.csv           (forward slashes, images/train/000123.png); labels =
    root/test.csv          "|"-separated names of all present labels
    root/captions.csv      header "image,caption" for the pre-training images
    root/images/<split>/NNNNNN.png
    root/world.json        every parameter, the seed and the counts; written last

A directory counts as a finished world only when ``world.json`` exists and matches the
spec. Every image is drawn from its own generator seeded by (seed, split, index), so a
split does not change when another split's count does. The figures the world produces
are a functional and comparative testbed, not a claim about real data.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError
from ..paths import cache_dir
from ..safeio import atomic_write_text

# Bump when the drawing or captioning changes: it is part of every world's hash.
GENERATOR_VERSION = 6

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 35),
    "purple": (135, 45, 180),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (245, 130, 190),
    "cyan": (40, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "heart")
SPLITS: tuple[str, ...] = ("pretrain", "train", "val", "test")
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world. Two equal specs give identical files.

    Attributes:
        seed: the world's seed (scene preferences, unseen split, every image).
        image_size: images are ``image_size x image_size`` RGB.
        n_colours, n_shapes: the first entries of :data:`COLOURS` / :data:`SHAPES`.
        n_scenes: number of scene types (each with its own label preferences).
        min_objects, max_objects: objects per image (uniform), all different compounds.
        radius_min, radius_max: object radius as a fraction of the image side.
        max_rotation: objects are turned by a uniform angle in +-max_rotation degrees
            (180 = any orientation; small angles keep shapes upright and easier to learn).
        unseen_fraction: share of the compounds held out as unseen labels.
        n_pretrain, n_train, n_val, n_test: images per split (pretrain has captions).
        shape_only_captions, colour_only_captions, mixed_captions: probability that a
            caption names only shapes / only colours / some objects by shape only.
        scene_core, scene_strength: each scene type has ``scene_core`` characteristic
            compounds that take ``scene_strength`` of its probability mass (the rest
            follows the scene's colour and shape preferences, with a floor), so labels
            co-occur strongly within a scene (what a label graph can use).
    """

    seed: int = 0
    image_size: int = 96
    n_colours: int = 8
    n_shapes: int = 6
    n_scenes: int = 8
    min_objects: int = 2
    max_objects: int = 6
    radius_min: float = 0.08
    radius_max: float = 0.2
    max_rotation: float = 20.0
    unseen_fraction: float = 0.25
    n_pretrain: int = 0
    n_train: int = 2500
    n_val: int = 500
    n_test: int = 1000
    shape_only_captions: float = 0.3
    colour_only_captions: float = 0.05
    mixed_captions: float = 0.15
    scene_core: int = 6
    scene_strength: float = 0.7

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> "WorldSpec":
        """A micro world (a few hundred images, generated in about a second)."""
        base = dict(seed=seed, n_pretrain=0, n_train=160, n_val=48, n_test=96)
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if not 1 <= self.n_colours <= len(COLOURS):
            raise UsageError(f"n_colours must be in 1..{len(COLOURS)}, got {self.n_colours}")
        if not 1 <= self.n_shapes <= len(SHAPES):
            raise UsageError(f"n_shapes must be in 1..{len(SHAPES)}, got {self.n_shapes}")
        if not 1 <= self.min_objects <= self.max_objects <= self.n_colours * self.n_shapes:
            raise UsageError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        if not 0 < self.radius_min <= self.radius_max < 0.5:
            raise UsageError(f"need 0 < radius_min <= radius_max < 0.5, got {self.radius_min}..{self.radius_max}")
        if not 0 <= self.unseen_fraction < 1:
            raise UsageError(f"unseen_fraction must be in [0, 1), got {self.unseen_fraction}")
        if self.image_size < 16:
            raise UsageError(f"image_size must be at least 16, got {self.image_size}")
        if min(self.n_pretrain, self.n_train, self.n_val, self.n_test) < 0 or self.n_scenes < 1:
            raise UsageError("image counts must be >= 0 and n_scenes >= 1")
        if self.scene_core < 0 or not 0 <= self.scene_strength <= 1:
            raise UsageError(f"need scene_core >= 0 and scene_strength in [0, 1], got {self.scene_core}, {self.scene_strength}")
        if self.scene_core and self.scene_core < self.max_objects and self.scene_strength == 1:
            raise UsageError("scene_strength 1 needs scene_core >= max_objects")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldSpec":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown world parameters: {', '.join(unknown)}")
        return cls(**d)

    @property
    def mean_labels_per_image(self) -> float:
        """Expected number of labels per image, (min_objects + max_objects) / 2: objects are
        uniform in that range and all different compounds, one label each. The k of the
        expected-positives losses (EPR, ROLE), which Cole et al. take as a known dataset
        statistic (1.5 VOC, 2.9 COCO)."""
        return (self.min_objects + self.max_objects) / 2.0

    @property
    def fingerprint(self) -> str:
        """16 hex chars naming this spec and the generator version."""
        text = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Sample:
    """One drawn image: ``image`` (H, W, 3) uint8, ``objects`` label indices in drawing
    order, ``scene`` the scene-type index, ``radii`` each object's radius in pixels (same
    order)."""

    image: np.ndarray
    objects: list[int]
    scene: int
    radii: list[float]


class World:
    """The sampled world of a :class:`WorldSpec`: labels, unseen split, scene types.

    Attributes:
        labels: C compound names, colour-major ("red circle", "red square", ...).
        colour_of, shape_of: (C,) int arrays, the colour / shape index of each label.
        unseen: names of the unseen labels (in label order); ``seen`` the others.
        scene_probs: (S, C) probability of each compound in each scene type.
    """

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.colours = list(COLOURS)[: spec.n_colours]
        self.shapes = list(SHAPES[: spec.n_shapes])
        nc, ns = spec.n_colours, spec.n_shapes
        self.labels = [f"{c} {s}" for c in self.colours for s in self.shapes]
        self.colour_of = np.repeat(np.arange(nc), ns)
        self.shape_of = np.tile(np.arange(ns), nc)
        rng = np.random.default_rng([spec.seed, 1_000_003])
        self.unseen_mask = self._pick_unseen(rng)
        self.unseen = [l for l, u in zip(self.labels, self.unseen_mask) if u]
        self.seen = [l for l, u in zip(self.labels, self.unseen_mask) if not u]
        self.scene_probs = self._scene_preferences(rng)
        self.scene_looks = [self._scene_look(rng) for _ in range(spec.n_scenes)]
        self.colour_rgb = np.array([COLOURS[c] for c in self.colours], dtype=np.float32) / 255.0
        s = spec.image_size
        self._yy, self._xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        self._interp = {g: _bilinear_matrix(s, g) for g in (3, 4, 6, 8)}

    # -- world structure ------------------------------------------------------------------
    def _pick_unseen(self, rng: np.random.Generator) -> np.ndarray:
        """(C,) bool: a balanced random set of compounds with every colour and shape kept
        seen at least once (each colour / shape loses at most ceil(U / n) compounds)."""
        nc, ns = self.spec.n_colours, self.spec.n_shapes
        n_unseen = int(round(self.spec.unseen_fraction * nc * ns))
        n_unseen = min(n_unseen, nc * ns - max(nc, ns))
        if n_unseen <= 0:
            return np.zeros(nc * ns, dtype=bool)
        cap_c, cap_s = -(-n_unseen // nc), -(-n_unseen // ns)
        cap_c, cap_s = min(cap_c, ns - 1), min(cap_s, nc - 1)
        for _ in range(1000):  # greedy over a random order; retry when it gets stuck
            per_c, per_s = np.zeros(nc, int), np.zeros(ns, int)
            mask = np.zeros(nc * ns, dtype=bool)
            for i in rng.permutation(nc * ns):
                c, s = divmod(int(i), ns)
                if per_c[c] < cap_c and per_s[s] < cap_s:
                    mask[i], per_c[c], per_s[s] = True, per_c[c] + 1, per_s[s] + 1
                    if mask.sum() == n_unseen:
                        return mask
        raise UsageError("could not draw a balanced unseen split; lower unseen_fraction")

    def _scene_preferences(self, rng: np.random.Generator) -> np.ndarray:
        """(S, C): each scene prefers a few colours and shapes (Dirichlet draws) and some
        specific compounds (log-normal factors); a floor keeps every compound possible."""
        nc, ns, C = self.spec.n_colours, self.spec.n_shapes, len(self.labels)
        core_n = min(self.spec.scene_core, C)
        probs = []
        for _ in range(self.spec.n_scenes):
            wc = rng.dirichlet(np.full(nc, 0.6))
            ws = rng.dirichlet(np.full(ns, 0.6))
            w = np.outer(wc, ws).ravel() * rng.lognormal(0.0, 0.6, size=C)
            w = 0.85 * w / w.sum() + 0.15 / C
            core = np.zeros(C)
            if core_n:
                core[rng.choice(C, size=core_n, replace=False)] = 1.0 / core_n
            w = self.spec.scene_strength * core + (1 - self.spec.scene_strength) * w
            probs.append(w / w.sum())
        return np.array(probs)

    def _scene_look(self, rng: np.random.Generator) -> dict:
        """A scene's background: tint (low saturation, mid value), texture grid size,
        stripe pattern and noise levels."""
        hue = rng.uniform(0, 1)
        tint = _hsv_to_rgb(hue, rng.uniform(0.05, 0.3), rng.uniform(0.38, 0.62))
        return {
            "tint": tint,
            "grid": int(rng.choice([3, 4, 6, 8])),
            "blob": float(rng.uniform(0.05, 0.12)),
            "stripe_amp": float(rng.uniform(0.0, 0.06)),
            "stripe_freq": float(rng.uniform(0.15, 0.6)),
            "stripe_angle": float(rng.uniform(0, np.pi)),
            "noise": float(rng.uniform(0.02, 0.05)),
        }

    # -- drawing --------------------------------------------------------------------------
    def sample(self, split: str, index: int, twin: str | None = None) -> Sample:
        """Draw image ``index`` of ``split`` (deterministic in (seed, split, index)).

        ``twin`` draws one of its twins, the same scene, background, places, sizes and
        noise, hard negatives for contrastive pre-training
        (``benchmarks/bench_world_levers.py``):

            "shape"   one or more objects given another shape (each keeps its colour): an
                      image that only shape tells apart from image ``index``
            "colour"  the colours permuted among the objects (each keeps its shape), so the
                      twin holds the same colours and the same shapes, bound differently
                      ("a red star and a blue ring" -> "a blue star and a red ring"): an
                      image that only binding tells apart. Where no permutation gives other
                      compounds (one colour, or the same shape in every colour present) the
                      twin is the image itself."""
        if twin not in (None, "shape", "colour"):
            raise UsageError(f"twin must be None, 'shape' or 'colour', got {twin!r}")
        rng = np.random.default_rng([self.spec.seed, SPLITS.index(split), index])
        spec = self.spec
        scene = int(rng.integers(spec.n_scenes))
        k = int(rng.integers(spec.min_objects, spec.max_objects + 1))
        objects = [int(i) for i in rng.choice(len(self.labels), size=k, replace=False, p=self.scene_probs[scene])]
        if twin:  # the drawing below takes the same random numbers whatever the compounds
            twin_rng = np.random.default_rng([self.spec.seed, SPLITS.index(split), index, 1 if twin == "shape" else 2])
            objects = (self._reshape if twin == "shape" else self._recolour)(objects, twin_rng)
        img = self._background(scene, rng)
        placed = self._place(k, rng)
        for label, (cx, cy, r) in zip(objects, placed):
            self._draw(img, label, cx, cy, r, rng)
        img += rng.standard_normal(img.shape, dtype=np.float32) * self.scene_looks[scene]["noise"]
        return Sample(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), objects, scene, [r for _, _, r in placed])

    def _reshape(self, objects: list[int], rng: np.random.Generator) -> list[int]:
        """``objects`` with each compound given another shape of the same colour with
        probability 1/2, at least one changed, the result still all different compounds."""
        out = list(objects)
        ns, changed = len(self.shapes), 0
        for j in rng.permutation(len(out)):
            if changed and rng.uniform() < 0.5:
                continue
            colour = int(self.colour_of[out[j]])
            free = [colour * ns + s for s in range(ns) if colour * ns + s not in out]
            if free:
                out[j] = int(rng.choice(free))
                changed += 1
        return out

    def _recolour(self, objects: list[int], rng: np.random.Generator, tries: int = 24) -> list[int]:
        """``objects`` with their colours permuted among them (each keeps its shape), the
        result all different compounds and not the same set as before; ``objects`` itself
        when ``tries`` random permutations find none."""
        ns = len(self.shapes)
        colours = [int(self.colour_of[o]) for o in objects]
        shapes = [int(self.shape_of[o]) for o in objects]
        for _ in range(tries):
            out = [colours[j] * ns + s for j, s in zip(rng.permutation(len(objects)), shapes)]
            if len(set(out)) == len(out) and set(out) != set(objects):
                return out
        return list(objects)

    def _background(self, scene: int, rng: np.random.Generator) -> np.ndarray:
        look = self.scene_looks[scene]
        tint = np.asarray(look["tint"], dtype=np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
        m = self._interp[look["grid"]]
        grid = rng.standard_normal((3, look["grid"], look["grid"]), dtype=np.float32)
        blobs = (m @ grid @ m.T).transpose(1, 2, 0) * look["blob"]
        a = look["stripe_angle"] + rng.normal(0, 0.3)
        phase = rng.uniform(0, 2 * np.pi)
        stripes = look["stripe_amp"] * np.sin(
            look["stripe_freq"] * (np.cos(a) * self._xx + np.sin(a) * self._yy) + phase
        )
        return tint[None, None, :] + blobs + stripes[..., None]

    def _place(self, k: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """k (cx, cy, r) in pixels, inside the image, overlapping little (centres at least
        0.85 (r1 + r2) apart); radii shrink when a crowded image needs room."""
        s = self.spec.image_size
        placed: list[tuple[float, float, float]] = []
        for _ in range(k):
            r = rng.uniform(self.spec.radius_min, self.spec.radius_max) * s
            for attempt in range(60):
                if attempt and attempt % 15 == 0:
                    r *= 0.85
                cx, cy = rng.uniform(r, s - r, size=2)
                if all((cx - x) ** 2 + (cy - y) ** 2 >= (0.85 * (r + q)) ** 2 for x, y, q in placed):
                    break
            placed.append((float(cx), float(cy), float(r)))
        return placed

    def _draw(self, img: np.ndarray, label: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
        """Alpha-composite one object into ``img`` (H, W, 3) float in place."""
        s = self.spec.image_size
        x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), s)
        y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), s)
        theta = np.deg2rad(rng.uniform(-self.spec.max_rotation, self.spec.max_rotation))
        ct, st = np.cos(theta), np.sin(theta)
        dx = (self._xx[y0:y1, x0:x1] - cx) / r
        dy = (self._yy[y0:y1, x0:x1] - cy) / r
        u, v = ct * dx + st * dy, -st * dx + ct * dy
        sdf = _shape_sdf(self.shapes[self.shape_of[label]], u, v)
        alpha = np.clip(0.5 - sdf * r, 0.0, 1.0)[..., None]  # ~1 pixel anti-aliased edge
        colour = self.colour_rgb[self.colour_of[label]] + rng.normal(0, 0.035, 3).astype(np.float32)
        phi = rng.uniform(0, 2 * np.pi)
        shade = 1.0 + 0.12 * (np.cos(phi) * dx + np.sin(phi) * dy)[..., None]
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - alpha) + np.clip(colour * shade, 0, 1) * alpha

    # -- captions -------------------------------------------------------------------------
    def caption(self, objects: list[int], rng: np.random.Generator) -> str:
        """A caption naming ``objects`` in random order with varied phrasing; sometimes
        by shape only, colour only, or a mix (probabilities from the spec)."""
        spec = self.spec
        order = [objects[i] for i in rng.permutation(len(objects))]
        u = rng.uniform()
        if u < spec.shape_only_captions:
            phrases = _counted([self.shapes[self.shape_of[o]] for o in order], rng)
            return _sentence(phrases, rng, kind="shape")
        u -= spec.shape_only_captions
        if u < spec.colour_only_captions:
            colours = list(dict.fromkeys(self.colours[self.colour_of[o]] for o in order))
            if rng.uniform() < 0.5:
                return _join([f"something {c}" for c in colours]) + "."
            return f"{_join(colours)} {'things' if len(order) > 1 else 'thing'}."
        u -= spec.colour_only_captions
        mixed = u < spec.mixed_captions
        phrases = []
        for o in order:
            shape = self.shapes[self.shape_of[o]]
            if mixed and rng.uniform() < 0.5:
                phrases.append(_article(shape))
            else:
                phrases.append(_article(f"{self.colours[self.colour_of[o]]} {shape}"))
        return _sentence(phrases, rng, kind="full")

    def info(self) -> dict:
        """Structure of the world (for ``world.json``)."""
        return {
            "labels": self.labels,
            "unseen": self.unseen,
            "colours": self.colours,
            "shapes": self.shapes,
            "scene_probs": np.round(self.scene_probs, 5).tolist(),
        }


# -- the pre-training corpus ------------------------------------------------------------------
# The shipped world model's pre-training corpus is its own, as web data is: a world with this
# fixed seed (its own scene types), drawn in memory. A demo's --seed changes the labelled
# world and the seen/unseen split, never the model.
CORPUS_SEED = 1_000_000_007


def corpus_spec(**overrides) -> WorldSpec:
    """The :class:`WorldSpec` of the pre-training corpus (drawing parameters as the default
    world, seed :data:`CORPUS_SEED`)."""
    return WorldSpec(**{"seed": CORPUS_SEED, "n_train": 0, "n_val": 0, "n_test": 0, **overrides})


def render_corpus(spec: WorldSpec, start: int, stop: int) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """Images ``start..stop`` of the ``pretrain`` split of ``spec`` in memory:
    ((N, H, W, 3) uint8, captions, objects), identical to what :func:`generate_world`
    writes for that split."""
    world = _WORKER_WORLD.get(spec)
    if world is None:
        _WORKER_WORLD.clear()
        world = _WORKER_WORLD[spec] = World(spec)
    s = spec.image_size
    images = np.empty((max(stop - start, 0), s, s, 3), dtype=np.uint8)
    captions, objects = [], []
    for k, i in enumerate(range(start, stop)):
        sample = world.sample("pretrain", i)
        images[k] = sample.image
        cap_rng = np.random.default_rng([spec.seed, 7_000_001, i])
        captions.append(world.caption(sample.objects, cap_rng))
        objects.append(sample.objects)
    return images, captions, objects


# -- shapes (signed distance in units of the radius; < 0 inside) ----------------------------
def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


_TRIANGLE_NORMALS = (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (approximately, in radius units) of points (u, v) to ``shape``
    drawn in the unit disc."""
    rad = np.sqrt(u * u + v * v)
    if shape == "circle":
        return rad - 0.95
    if shape == "ring":
        return np.abs(rad - 0.7) - 0.27
    if shape == "square":
        return _box(u, v, 0.75, 0.75)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / np.sqrt(2)
    if shape == "cross":
        return np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95))
    if shape == "triangle":  # equilateral: three half-planes 0.5 from the centre
        return np.maximum.reduce([np.cos(a) * u + np.sin(a) * v for a in _TRIANGLE_NORMALS]) - 0.5
    if shape == "star":
        ang = np.arctan2(v, u)
        t = np.abs(((ang * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a tip, 0 between tips
        return (rad - (0.42 + 0.58 * t ** 1.5)) * 0.6
    if shape == "heart":  # a diamond with two discs on its upper edges (y points up)
        x, y = np.abs(u), -v
        h, c = 0.85, -0.088
        diamond = (x + np.abs(y - c) - h) / np.sqrt(2)
        lobe = np.sqrt((x - h / 2) ** 2 + (y - c - h / 2) ** 2) - h / np.sqrt(2)
        return np.minimum(diamond, lobe)
    raise ValueError(f"unknown shape {shape!r}")


# -- text helpers ---------------------------------------------------------------------------
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def _counted(shapes: list[str], rng: np.random.Generator) -> list[str]:
    """["star", "ring", "star"] -> ["two stars", "a ring"] (first-appearance order)."""
    counts = {s: shapes.count(s) for s in dict.fromkeys(shapes)}
    return [_article(s) if n == 1 else f"{_NUMBERS.get(n, str(n))} {_plural(s)}" for s, n in counts.items()]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


_FULL_TEMPLATES = ("{}.", "a photo of {}.", "there is {}.", "an image with {}.", "{} on a textured background.",
                   "a picture showing {}.", "{} in the scene.")
_SHAPE_TEMPLATES = ("{}.", "a photo of {}.", "there is {}.", "shapes: {}.", "an image with {}.")


def _sentence(phrases: list[str], rng: np.random.Generator, kind: str) -> str:
    templates = _FULL_TEMPLATES if kind == "full" else _SHAPE_TEMPLATES
    glue = rng.uniform()
    if glue < 0.7 or len(phrases) == 1:
        body = _join(phrases)
    elif glue < 0.85:
        body = " with ".join([phrases[0], _join(phrases[1:])])
    else:
        body = ", ".join(phrases)
    template = templates[int(rng.integers(len(templates)))]
    if template.startswith("there is") and body.split(" ", 1)[0] in _NUMBERS.values():
        template = "there are" + template[len("there is"):]
    return template.format(body)


# -- numeric helpers ------------------------------------------------------------------------
def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix that linearly interpolates ``grid`` control points over
    ``size`` pixels (rows sum to 1)."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    frac = pos - lo
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


# -- on disk --------------------------------------------------------------------------------
def _split_count(spec: WorldSpec, split: str) -> int:
    return {"pretrain": spec.n_pretrain, "train": spec.n_train, "val": spec.n_val, "test": spec.n_test}[split]


def _write_csv(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_world_json(root: str | os.PathLike) -> dict | None:
    """The ``world.json`` of a finished world at ``root``, or None when there is none."""
    path = Path(root) / "world.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(root: str | os.PathLike, spec: WorldSpec) -> bool:
    """True when ``root`` holds a complete world generated from ``spec``."""
    meta = read_world_json(root)
    return bool(meta) and meta.get("fingerprint") == spec.fingerprint and meta.get("spec") == spec.to_dict()


_WORKER_WORLD: dict = {}


def _render_chunk(spec: WorldSpec, root: str, split: str, start: int, stop: int) -> tuple[list, int]:
    """Draw and save images ``start..stop`` of ``split``; returns (csv rows, #objects)."""
    world = _WORKER_WORLD.get(spec)
    if world is None:
        _WORKER_WORLD.clear()
        world = _WORKER_WORLD[spec] = World(spec)
    rows, n_obj = [], 0
    for i in range(start, stop):
        sample = world.sample(split, i)
        rel = f"images/{split}/{i:06d}.png"
        Image.fromarray(sample.image).save(os.path.join(root, rel), compress_level=1)
        n_obj += len(sample.objects)
        if split == "pretrain":
            cap_rng = np.random.default_rng([spec.seed, 7_000_001, i])
            rows.append((rel, world.caption(sample.objects, cap_rng)))
        else:
            rows.append((rel, "|".join(world.labels[o] for o in sorted(sample.objects))))
    return rows, n_obj


def generate_world(spec: WorldSpec, root: str | os.PathLike, *, progress: bool = False,
                   workers: int | None = None) -> Path:
    """Draw every split of ``spec`` and write the dataset files under ``root``.

    Any ``world.json`` already in ``root`` is removed first and written again last, so
    an interrupted generation never looks finished. ``workers`` processes draw chunks
    of images in parallel (default: one per CPU core, at most 4); the files do not
    depend on it. Returns ``root`` as a Path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.json").unlink(missing_ok=True)
    world = World(spec)
    t0 = time.perf_counter()
    total = sum(_split_count(spec, s) for s in SPLITS)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if total >= 4000 else 1
    chunk = 1000
    jobs = []
    for split in SPLITS:
        folder = root / "images" / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        n = _split_count(spec, split)
        jobs += [(split, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="world", unit="img")
    results: dict[tuple[str, int], tuple[list, int]] = {}
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_render_chunk, spec, str(root), *job): job for job in jobs}
            for fut, job in futures.items():
                results[job[:2]] = fut.result()
                if bar is not None:
                    bar.update(job[2] - job[1])
    else:
        for job in jobs:
            results[job[:2]] = _render_chunk(spec, str(root), *job)
            if bar is not None:
                bar.update(job[2] - job[1])
    if bar is not None:
        bar.close()
    counts: dict[str, int] = {}
    objects_per_image: dict[str, float] = {}
    for split in SPLITS:
        parts = [results[(s, a)] for (s, a, _) in jobs if s == split]
        rows = [r for part in parts for r in part[0]]
        n = _split_count(spec, split)
        counts[split] = n
        objects_per_image[split] = round(sum(p[1] for p in parts) / max(n, 1), 4)
        if split == "pretrain":
            _write_csv(root / "captions.csv", ("image", "caption"), rows)
        else:
            _write_csv(root / f"{split}.csv", ("image", "labels"), rows)
    atomic_write_text(root / "labels.txt", "".join(l + "\n" for l in world.labels))
    atomic_write_text(root / "unseen.txt", "".join(l + "\n" for l in world.unseen))
    meta = {
        "format": "sigrl-world",
        "generator_version": GENERATOR_VERSION,
        "fingerprint": spec.fingerprint,
        "spec": spec.to_dict(),
        "counts": counts,
        "objects_per_image": objects_per_image,
        "seconds": round(time.perf_counter() - t0, 2),
        **world.info(),
    }
    atomic_write_text(root / "world.json", json.dumps(meta, indent=1) + "\n")
    return root


def world_dir(spec: WorldSpec) -> Path:
    """Where :func:`ensure_world` keeps the world of ``spec``."""
    return cache_dir() / f"world-{spec.fingerprint}"


def ensure_world(spec: WorldSpec, *, progress: bool = False) -> Path:
    """The root of the world of ``spec`` under the cache directory, generated on first
    use (into a temporary directory renamed into place when complete) and reused after."""
    root = world_dir(spec)
    if is_finished(root, spec):
        return root
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    generate_world(spec, tmp, progress=progress)
    if root.exists():  # an unfinished or foreign directory: replace it
        if is_finished(root, spec):  # someone else finished it meanwhile
            shutil.rmtree(tmp)
            return root
        shutil.rmtree(root)
    try:
        os.rename(tmp, root)
    except OSError:
        if not is_finished(root, spec):
            raise DataError(f"{root}: could not move the generated world into place")
        shutil.rmtree(tmp, ignore_errors=True)
    return root
