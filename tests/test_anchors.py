"""The anchor metric on real embeddings (lit-offline on digits) against independent computations,
and the predictor's anchor space: feasible at any zero-shot accuracy, and able to predict past
the history's largest gain when the anchor says so."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import numpy as np
import pytest

from advisor.predictor.anchors import anchor_at, anchor_share, row_anchor_values, share_to_after
from advisor.specs import DatasetSpec, ModelSpec
from advisor_plugins.metrics import anchors as A


@pytest.fixture(scope="module")
def emb():
    from advisor.embed import embed

    return embed(ModelSpec("lit-offline"), DatasetSpec("digits"), split="train", max_images=600, quiet=True)


@pytest.fixture(scope="module")
def values(emb):
    return A.anchors(emb)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_probe_matches_scikit_learn_logistic_regression_on_the_same_draws(emb, values) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _unit(emb.image), np.asarray(emb.labels).astype(int)
    n_classes = len(emb.class_names)
    for k in (1, 16):
        ours, ref = [], []
        for d in range(A.DRAWS):
            tr, te, _ = A.draw(y, k, d)
            w, b = A.fit_probe(x[tr], y[tr], n_classes)
            pred = np.argmax(x[te] @ w.T + b, axis=1)
            lr = LogisticRegression(C=A.PROBE_C, max_iter=1000).fit(x[tr], y[tr])
            agree = np.mean(pred == lr.predict(x[te]))
            assert agree >= 0.98, (k, d, agree)
            ours.append(np.mean(pred == y[te]))
            ref.append(lr.score(x[te], y[te]))
        assert values[f"anchor_probe.k{k}"] == pytest.approx(np.mean(ours), abs=1e-12)
        assert values[f"anchor_probe.k{k}"] == pytest.approx(np.mean(ref), abs=0.01)
        assert values[f"anchor_probe_sd.k{k}"] == pytest.approx(np.std(ours), abs=1e-12)


def test_prototype_knn_and_zero_shot_against_plain_loops(emb, values) -> None:
    x, t, y = _unit(emb.image), _unit(emb.text), np.asarray(emb.labels).astype(int)
    k = 4
    proto, knn, zs = [], [], []
    for d in range(A.DRAWS):
        tr, te, _ = A.draw(y, k, d)
        means = {c: _unit(x[tr][y[tr] == c].mean(0, keepdims=True))[0] for c in np.unique(y[tr])}
        right_p = right_k = right_z = 0
        for i in te:
            best = max(means, key=lambda c: float(x[i] @ means[c]))
            right_p += best == y[i]
            sims = sorted(((float(x[i] @ x[j]), j) for j in tr), key=lambda s: -s[0])[:4]
            votes: dict[int, list[int]] = {}
            for rank, (_, j) in enumerate(sims):
                votes.setdefault(int(y[j]), []).append(rank)
            top = max(votes, key=lambda c: (len(votes[c]), -min(votes[c])))
            right_k += top == y[i]
            right_z += int(np.argmax(t @ x[i])) == y[i]
        proto.append(right_p / len(te))
        knn.append(right_k / len(te))
        zs.append(right_z / len(te))
    assert values["anchor_proto.k4"] == pytest.approx(np.mean(proto))
    assert values["anchor_knn.k4"] == pytest.approx(np.mean(knn))
    assert values["anchor_zs.k4"] == pytest.approx(np.mean(zs))


def test_a_class_smaller_than_k_plus_one_is_capped_and_said(emb) -> None:
    from advisor.specs import Embeddings

    keep = np.flatnonzero((np.asarray(emb.labels) != 3) | (np.cumsum(np.asarray(emb.labels) == 3) <= 5))
    small = Embeddings(image=emb.image[keep], text=emb.text, labels=np.asarray(emb.labels)[keep],
                       class_names=emb.class_names)
    v = A.anchors(small)
    assert v["anchor_capped.k4"] == 0.0  # 5 images: 4 to train, 1 to test
    assert v["anchor_capped.k16"] == pytest.approx(0.1)  # 1 class of 10
    assert 0.0 <= v["anchor_probe.k64"] <= 1.0


def test_anchor_at_interpolates_in_log_shots() -> None:
    sig = {"anchor_probe.k4": 0.5, "anchor_probe.k16": 0.7, "anchor_probe.k1": 0.3}
    assert anchor_at(sig, "anchor_probe", 4) == 0.5
    assert anchor_at(sig, "anchor_probe", 8) == pytest.approx(0.6)
    assert anchor_at(sig, "anchor_probe", 100) == 0.7 and anchor_at(sig, "anchor_probe", None) == 0.7
    assert math.isnan(anchor_at(sig, "anchor_knn", 4))
    row = {"shots": 8, "signals": {**sig, "anchor_zs.k4": 0.1, "anchor_zs.k16": 0.1}}
    assert row_anchor_values(row)["anchor_lift"] == pytest.approx(0.5)


def test_anchor_space_round_trips_and_stays_feasible() -> None:
    after = np.array([0.0, 0.2, 0.5, 0.97, 1.0])
    anchor = np.array([0.5, 0.5, 0.5, 0.9, 0.9])
    assert np.allclose(share_to_after(anchor_share(after, anchor), anchor), after)
    shares = np.linspace(-3, 3, 61)  # even a model far out of range maps to an accuracy
    for a in (0.0, 0.05, 0.5, 0.95, 1.0):
        back = share_to_after(shares, np.full_like(shares, a))
        assert back.min() >= 0.0 and back.max() <= 1.0
