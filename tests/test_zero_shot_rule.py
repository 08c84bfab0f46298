"""One ZSL rule: the unseen labels are scored in their own pass (their own label graph and
normalisation over labels), never cut out of the all-label (GZSL) score matrix. The
trainer's eval.json, `sigrl eval`, the bench path and (in test_demo) the demo all give
the own-pass number, recomputed here from the head's outputs with scikit-learn's AP."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sigrl.bench import evaluate_zero_shot
from sigrl.checkpoint import load_run
from sigrl.data.csvdata import load_csv_dataset
from sigrl.evaluate import evaluate_run
from sigrl.experiment import split_part
from sigrl.prompts import embed_labels
from sigrl.scorer import Scorer
from sigrl.train import train

from test_train import config, make_dataset


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of AP over the images labelled +1/-1 for that class (0 for a
    class without a positive, the reference rule)."""
    aps = []
    for c in range(targets.shape[1]):
        known = targets[:, c] != 0
        y = targets[known, c] == 1
        aps.append(average_precision_score(y, scores[known, c]) if y.any() else 0.0)
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def zsl_run(tmp_path_factory, tiny_clip_files):
    root = make_dataset(tmp_path_factory.mktemp("zsl-data"), n_train=24, n_val=8, n_test=16, seed=3)
    tmp = tmp_path_factory.mktemp("zsl-run")
    cfg = config(tmp, root, tiny_clip_files, "head.class=sigrl", "head.options.preset=reference", "train.epochs=2")
    res = train(cfg, progress=False)
    return cfg, res, root


def test_zsl_scores_unseen_labels_in_their_own_pass(zsl_run):
    cfg, res, root = zsl_run
    run = load_run(cfg.output)
    ds = load_csv_dataset(root)
    scorer = Scorer.from_run(cfg.output)
    part = split_part(ds.test, scorer.backbone, cfg.cache.dir, unseen=ds.unseen, progress=False)
    g, l = part.features.read(part.rows)
    targets = np.asarray(part.targets)
    cols = [part.labels.index(u) for u in ds.unseen]
    with torch.no_grad():
        T_all = embed_labels(scorer.backbone, part.labels, run.prompts)
        T_unseen = embed_labels(scorer.backbone, list(ds.unseen), run.prompts)
        own = run.head(g.float(), l.float(), T_unseen, label_names=list(ds.unseen)).float().numpy()
        cut = run.head(g.float(), l.float(), T_all, label_names=part.labels).float().numpy()[:, cols]
    own_map, cut_map = sklearn_map(own, targets[:, cols]), sklearn_map(cut, targets[:, cols])
    assert abs(own_map - cut_map) > 1e-3, "the case must tell the two rules apart"

    result = evaluate_run(cfg.output, progress=False, write=False)  # sigrl eval
    assert result["metrics"]["zsl/mAP"] == pytest.approx(own_map, abs=1e-6)
    bench = evaluate_zero_shot(Scorer.from_run(cfg.output), ds, cfg.cache.dir, progress=False,
                               batch_size=cfg.eval.batch_size)
    assert bench["zsl"]["mAP"] == pytest.approx(own_map, abs=1e-6)
    saved = json.loads((cfg.output and (run.run_dir / "eval.json")).read_text())  # the trainer's
    assert saved["metrics"]["zsl/mAP"] == pytest.approx(own_map, abs=1e-6)
    # GZSL: all labels in one pass
    assert result["metrics"]["gzsl/mAP"] == pytest.approx(sklearn_map(
        run.head(g.float(), l.float(), T_all, label_names=part.labels).detach().float().numpy(), targets), abs=1e-6)


def test_sigrl_eval_json_prints_the_same_numbers(zsl_run):
    cfg, res, _ = zsl_run
    out = subprocess.run([sys.executable, "-m", "sigrl", "eval", str(cfg.output), "--json", "-q"],
                         capture_output=True, text=True, check=True).stdout
    printed = json.loads(out)["metrics"]
    best = {k[len("test/"):]: v for k, v in res.best_metrics.items() if k.startswith("test/")}
    assert printed.keys() == best.keys()
    for k in best:
        assert printed[k] == pytest.approx(best[k], abs=1e-6), k
