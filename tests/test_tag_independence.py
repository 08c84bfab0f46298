"""Independent tagging scores: a label's probability never depends on the other labels."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigrl.tagging import Tagger

POOL = ["dog", "cat", "red car", "sunset", "beach", "blue circle", "tree", "orange square", "ring", "sky",
        "a very long label name with many words", "rouge ✓"]


@pytest.fixture(scope="module")
def feats(tiny_backbone):
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 64, 64)
    return tiny_backbone.encode_images(pixels)


@pytest.fixture(scope="module")
def tagger(tiny_backbone):
    return Tagger(POOL, backbone=tiny_backbone)


@pytest.fixture(scope="module")
def head_tagger(tiny_backbone):
    from sigrl.modules.head import SigRLHead
    from sigrl.scorer import Scorer

    t = Tagger(POOL, backbone=tiny_backbone)
    torch.manual_seed(1)
    head = SigRLHead(tiny_backbone.embed_dim, preset="reference", logit_bias=0.3).eval()
    t.scorer = Scorer(t.scorer.text, head)
    t.head = head
    t.context = ["dog", "cat", "tree"]  # the run's training labels, for a real run
    return t


def _scores(t, labels, g, l, context=None):
    t.set_labels(labels)
    if context is not None:
        s = t.scorer.per_label(g, l, t.labels, context=context).double()
        return dict(zip(t.labels, torch.sigmoid(s * t._a + t._b).T))
    return dict(zip(t.labels, t.score_features(g, l).T))


subsets = st.lists(st.sampled_from(POOL), min_size=1, max_size=len(POOL), unique=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=subsets, b=subsets)
def test_clip_matching_label_score_independent_of_other_labels(tagger, feats, a, b):
    g, l = feats
    sa, sb = _scores(tagger, a, g, l), _scores(tagger, b, g, l)
    for name in set(a) & set(b):
        assert torch.allclose(sa[name].double(), sb[name].double(), atol=1e-6, rtol=0), name


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=subsets, b=subsets)
def test_trained_head_label_score_independent_of_other_labels(head_tagger, feats, a, b):
    g, l = feats
    with torch.no_grad():
        sa = _scores(head_tagger, a, g, l, head_tagger.context)
        sb = _scores(head_tagger, b, g, l, head_tagger.context)
    for name in set(a) & set(b):
        assert torch.allclose(sa[name], sb[name], atol=1e-6, rtol=0), name


def test_softmax_scores_do_depend_on_the_other_labels(tiny_backbone, feats):
    g, l = feats
    t = Tagger(["dog", "cat"], backbone=tiny_backbone, scores="softmax")
    two = t.score_features(g, l)[:, 0]
    t.set_labels(["dog", "cat", "sunset", "beach"])
    four = t.score_features(g, l)[:, 0]
    assert not torch.allclose(two, four, atol=1e-4)


def test_head_scores_the_label_in_its_context(head_tagger, feats):
    """Label c of a head = the head's own logit (LogitBias included) in context + [c]."""
    g, l = feats
    s = head_tagger.scorer.per_label(g, l, ["sunset", "cat"], context=head_tagger.context)
    with torch.no_grad():
        own = head_tagger.scorer(g, l, ["dog", "cat", "tree", "sunset"])[:, 3]
        inside = head_tagger.scorer(g, l, ["dog", "cat", "tree"])[:, 1]
    assert torch.allclose(s[:, 0], own) and torch.allclose(s[:, 1], inside)
