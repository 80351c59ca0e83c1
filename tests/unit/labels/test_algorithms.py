"""The labels room's algorithms on stand-in embeddings (Gaussian blobs): milliseconds each."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from graft.labels import audit, duplicates, heads, suggest
from graft.labels.space import centred_l2
from tests.fixtures import blobs, make_pattern_images


def _cl2(x: np.ndarray) -> np.ndarray:
    return centred_l2(x, x.mean(axis=0))


def test_loo_margin_puts_a_flipped_label_first_and_skips_single_image_classes():
    x, y = blobs(20, seed=0)
    y = y.copy()
    y[5] = 2  # a class-0 image labelled 2
    z = _cl2(x)
    assert audit.ranking(z, y, 3)[0] == 5
    score, other = audit.loo_margin(z, y, 3)
    assert score[5] < 0 and other[5] == 0
    # the fast form equals the definition: cosine to the own mean without the image
    own = z[y == 1].sum(axis=0) - z[30]
    own_cos = z[30] @ own / np.linalg.norm(own)
    means = [z[y == k].sum(axis=0) for k in (0, 2)]
    best_other = max(z[30] @ m / np.linalg.norm(m) for m in means)
    assert score[30] == pytest.approx(own_cos - best_other)
    y1 = np.array([0, 0, 0, 1])
    assert np.isnan(audit.loo_margin(z[:4], y1, 2)[0][3])  # class 1 has one image


def test_kmeans_picks_are_unlabelled_diverse_and_central():
    x, y = blobs(30, seed=1)
    z = _cl2(x)
    labelled = np.zeros(len(z), bool)
    picks = suggest.kmeans_picks(z, labelled, 3, seed=0, min_cluster=2)
    assert sorted(y[[p.index for p in picks]]) == [0, 1, 2]  # one per group
    for p in picks:  # each pick is near its blob's centre: among the 10 most central of 30
        members = np.flatnonzero(y == y[p.index])
        dist = np.linalg.norm(z[members] - z[members].mean(axis=0), axis=1)
        assert p.index in members[np.argsort(dist)[:10]]
    # labels on group 0 already: the next picks go to the other groups, never a labelled image
    labelled[y == 0] = True
    picks = suggest.kmeans_picks(z, labelled, 2, seed=0, min_cluster=2)
    assert not labelled[[p.index for p in picks]].any()
    assert sorted(y[[p.index for p in picks]]) == [1, 2]


def test_margin_picks_take_the_doubtful_images_and_never_a_labelled_one():
    x, y = blobs(30, seed=2)
    x[0] = (x[y == 0].mean(axis=0) + x[y == 1].mean(axis=0)) / 2  # between groups 0 and 1
    z = _cl2(x)
    labelled = np.zeros(len(z), bool)
    labelled[[1, 2, 3, 31, 32, 33, 61, 62, 63]] = True
    method, picks, probs = suggest.choose(z, labelled, y[labelled], ["a", "b", "c"], 3,
                                          suggest.SuggestParams(method="auto", cold_start=3))
    assert method == "margin" and len(picks) == 3
    assert not labelled[[p.index for p in picks]].any()
    m = heads.margin(probs)
    free = np.flatnonzero(~labelled)
    doubtful = set(free[np.argsort(m[free])[: suggest.DOUBT_POOL * 3]])
    assert 0 in doubtful  # the planted in-between image
    assert {p.index for p in picks} <= doubtful  # spread over the 30 most doubtful
    assert [p.score for p in picks] == sorted((p.score for p in picks), reverse=True)
    assert m[[p.index for p in picks]].mean() < m[free].mean()
    assert "least sure of" in picks[0].reason
    assert np.allclose(probs.sum(axis=1), 1)
    assert suggest.resolve_method("auto", np.array([3, 2, 3]), 3) == "kmeans"
    assert heads.margin(np.array([[0.7, 0.2, 0.1]])) == pytest.approx([0.5])


def test_thumbnail_check_finds_a_reencoded_copy_and_calibrates(tmp_path):
    folder = make_pattern_images(tmp_path / "img", per_class=4, size=48)
    files = sorted(folder.rglob("*.png"))
    copy = duplicates.reencode(Image.open(files[5]), tmp_path / "copy.jpg", 0.8, 75)
    cal = duplicates.calibrate(files, 16, 3.0, seed=0, max_pixels=10**6)
    assert 0.9 < cal["q05"] <= 1
    assert cal["threshold"] == pytest.approx(1 - 3 * (1 - cal["q05"]), abs=1e-5)
    refs = duplicates.thumbnails(files, 16, 10**6)
    query = duplicates.thumbnails([copy], 16, 10**6)
    emb = np.eye(len(files))  # stand-in embeddings: the copy's nearest is its source
    best, sim, flagged = duplicates.match(query, emb[[5]], refs, emb, cal["threshold"], 1)
    assert (best[0], bool(flagged[0])) == (5, True) and sim[0] >= cal["threshold"]
    # the same thumbnail match, but the embedding puts the source outside the top 1: not flagged
    _, _, flagged = duplicates.match(query, emb[[6]], refs, emb, cal["threshold"], 1)
    assert not flagged[0]
