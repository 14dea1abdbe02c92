"""Each built-in metric against an independent, plainly written reference, plus invariances and
hand-computable cases. References are deliberately slow and direct (double loops, scipy's
sqrtm, linear assignment, the LogME paper's matrix equations)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment

from advisor.specs import Embeddings
from advisor_plugins.metrics import _linalg, iimm, mds, mir, modality_gap, transferability as tr, zero_shot


def make_emb(n=120, d=16, c=5, seed=0, paired=False, spread=1.0, layers=None) -> Embeddings:
    """Unnormalised embeddings with class structure, random row norms and a modality offset."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((c, d)) * rng.uniform(0.5, 3.0, (c, 1)) + 0.7
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    image = (text[labels] * 0.8 + spread * rng.standard_normal((n, d)) - 0.4) * rng.uniform(0.2, 5.0, (n, 1))
    pt = text[labels] + 0.5 * rng.standard_normal((n, d)) if paired else None
    return Embeddings(image=image, text=text, labels=labels, class_names=[f"c{i}" for i in range(c)],
                      paired_text=pt, image_layers=layers[0] if layers else None,
                      text_layers=layers[1] if layers else None)


def unit(v):
    return v / np.sqrt(sum(x * x for x in v))


def norm_rows(a):
    return np.array([unit(np.asarray(r, dtype=np.float64)) for r in a])


def rotation(d, seed=1):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def rotated(emb: Embeddings, q: np.ndarray) -> Embeddings:
    return Embeddings(image=emb.image @ q, text=emb.text @ q, labels=emb.labels, class_names=emb.class_names,
                      paired_text=None if emb.paired_text is None else emb.paired_text @ q)


def permuted(emb: Embeddings, seed=3) -> Embeddings:
    p = np.random.default_rng(seed).permutation(len(emb.labels))
    return Embeddings(image=emb.image[p], text=emb.text, labels=emb.labels[p], class_names=emb.class_names,
                      paired_text=None if emb.paired_text is None else emb.paired_text[p])


def assert_same(a: dict, b: dict, rtol=1e-9, atol=1e-10, skip=()):
    assert set(a) == set(b)
    for k in a:
        if k not in skip:
            assert a[k] == pytest.approx(b[k], rel=rtol, abs=atol), k


# ---------------------------------------------------------------------------------- IIMM


def test_iimm_matches_double_loop_reference():
    emb = make_emb(n=60, d=8, c=4)
    x, t, y = norm_rows(emb.image), norm_rows(emb.text), emb.labels
    n, c = len(x), len(t)
    per_image = []
    for i in range(n):
        wrong = [float(np.dot(x[i], t[k])) for k in range(c) if k != y[i]]
        per_image.append(sum(wrong) / len(wrong))
    inter = sum(per_image) / n
    pair_sum, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            pair_sum += float(np.dot(x[i], x[j]))
            pairs += 1
    intra = pair_sum / pairs
    correct = sum(float(np.dot(x[i], t[y[i]])) for i in range(n)) / n
    got = iimm.iimm(emb)
    assert got["iimm_inter"] == pytest.approx(inter, abs=1e-12)
    assert got["iimm_intra"] == pytest.approx(intra, abs=1e-12)
    assert got["iimm"] == pytest.approx((inter + intra) / 2, abs=1e-12)
    assert got["correct_cos"] == pytest.approx(correct, abs=1e-12)


def test_iimm_matches_official_matrix_form():
    # mit-ll/IIMM metrics.py: uniformity_image (NaN out the true class) and inter (strict lower triangle).
    emb = make_emb(n=80, d=12, c=6, seed=5)
    x, t = norm_rows(emb.image), norm_rows(emb.text)
    a = t @ x.T
    for k, j in enumerate(emb.labels):
        a[j, k] = np.nan
    uni = np.nanmean(a, axis=0).mean()
    g = x @ x.T
    low = np.mean(g[np.tril_indices_from(g, k=-1)])
    assert iimm.iimm(emb)["iimm"] == pytest.approx(np.mean([uni, low]), abs=1e-12)


def test_iimm_hand_cases():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    emb = Embeddings(image=np.stack([e1 * 2, e2 * 5]), text=np.stack([e1, e2]), labels=np.array([0, 1]), class_names=["a", "b"])
    assert iimm.iimm(emb) == {"iimm": 0.0, "iimm_inter": 0.0, "iimm_intra": 0.0, "correct_cos": 1.0}
    # All images on the same ray, the wrong class text opposite: inter -1, intra +1, IIMM 0.
    emb = Embeddings(image=np.tile(e1, (4, 1)) * 3, text=np.stack([e1, -e1]), labels=np.zeros(4, int), class_names=["a", "b"])
    got = iimm.iimm(emb)
    assert got["iimm_inter"] == pytest.approx(-1) and got["iimm_intra"] == pytest.approx(1) and got["iimm"] == pytest.approx(0)


def test_iimm_invariant_to_order_rotation_and_scale():
    emb = make_emb()
    base = iimm.iimm(emb)
    assert_same(base, iimm.iimm(permuted(emb)))
    assert_same(base, iimm.iimm(rotated(emb, rotation(emb.image.shape[1]))))
    scaled = Embeddings(image=emb.image * 7.0, text=emb.text * 0.1, labels=emb.labels, class_names=emb.class_names)
    assert_same(base, iimm.iimm(scaled))


# ---------------------------------------------------------------------------------- Fréchet


def reference_frechet(x, y, mean_term=True):
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    mean = np.sum((x.mean(0) - y.mean(0)) ** 2) if mean_term else 0.0
    return mean + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)) @ rng.standard_normal((10, 10))
    y = rng.standard_normal((250, 10)) * 0.5 + 1.0
    assert _linalg.frechet_distance(x, y) == pytest.approx(reference_frechet(x, y), rel=1e-8)
    assert _linalg.frechet_distance(x, y, mean_term=False) == pytest.approx(reference_frechet(x, y, False), rel=1e-8)


def test_frechet_identical_is_zero_and_rotation_invariant():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 12))
    y = rng.standard_normal((180, 12)) * 2
    assert _linalg.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    q = rotation(12)
    assert _linalg.frechet_distance(x @ q, y @ q) == pytest.approx(_linalg.frechet_distance(x, y), rel=1e-9)


def test_frechet_with_fewer_samples_than_dims_is_real_and_exact():
    # N < d: singular covariances. Independent reference: with S1 = A A^T and S2 = B B^T,
    # tr (S1^1/2 S2 S1^1/2)^1/2 is the sum of singular values of A^T B (an n1 x n2 matrix).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((15, 64))
    y = rng.standard_normal((11, 64)) + 0.3
    a = (x - x.mean(0)).T / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)).T / np.sqrt(len(y) - 1)
    nuclear = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * nuclear
    got = _linalg.frechet_distance(x, y)
    assert isinstance(got, float) and np.isfinite(got)
    assert got == pytest.approx(ref, rel=1e-8)


# ---------------------------------------------------------------------------------- modality gap


def test_gap_terms_match_plain_references():
    emb = make_emb(n=50, d=6, c=8, seed=4)
    x, t = norm_rows(emb.image), norm_rows(emb.text)
    tp = t[emb.labels]
    got = modality_gap.modality_gap(emb)
    assert got["gap_raw"] == pytest.approx(np.linalg.norm(x.mean(0) - t.mean(0)), abs=1e-12)
    assert got["gap_paired"] == pytest.approx(np.mean([np.linalg.norm(x[i] - tp[i]) for i in range(len(x))]), abs=1e-12)
    assert got["gap_centroid"] == pytest.approx(np.linalg.norm(x.mean(0) - tp.mean(0)), abs=1e-12)
    xc, tc = x - x.mean(0), tp - tp.mean(0)
    assert got["gap_dist_paired"] == pytest.approx(np.mean(np.linalg.norm(xc - tc, axis=1)), abs=1e-12)
    assert got["gap_dist_fd"] == pytest.approx(reference_frechet(xc, tc, mean_term=False), rel=1e-7)
    # Exact OT between two uniform clouds of equal size is an assignment problem.
    cost = ((xc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    assert got["gap_dist_ot"] == pytest.approx(cost[r, c].mean(), rel=1e-9)
    assert got["gap_dist_ot"] >= got["gap_dist_fd"] - 1e-9  # Gelbrich bound
    import ot

    k = modality_gap.SW_PROJECTIONS  # the same directions (numpy generator, seed 0), POT's 1-D W2 on each
    dirs = np.random.default_rng(0).standard_normal((xc.shape[1], k))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    sw = np.mean([ot.wasserstein_1d(xc @ dirs[:, j], tc @ dirs[:, j], p=2) for j in range(k)])
    assert got["gap_dist_sw"] == pytest.approx(sw, rel=1e-7)


def test_gap_with_captions_uses_paired_text_and_matches_emd2():
    import ot

    emb = make_emb(n=40, d=5, c=3, paired=True, seed=6)
    x, tp = norm_rows(emb.image), norm_rows(emb.paired_text)
    xc, tc = x - x.mean(0), tp - tp.mean(0)
    w = np.full(len(x), 1 / len(x))
    got = modality_gap.modality_gap(emb)
    assert got["gap_dist_ot"] == pytest.approx(ot.emd2(w, w, ot.dist(xc, tc)), rel=1e-9)
    assert got["gap_dist_fd"] == pytest.approx(reference_frechet(xc, tc, mean_term=False), rel=1e-7)
    assert got["gap_centroid"] == pytest.approx(np.linalg.norm(x.mean(0) - tp.mean(0)), abs=1e-12)


def test_gap_is_zero_for_identical_modalities():
    text = np.random.default_rng(0).standard_normal((4, 7))
    labels = np.repeat(np.arange(4), 5)
    emb = Embeddings(image=text[labels] * 3.0, text=text, labels=labels, class_names=list("abcd"))
    got = modality_gap.modality_gap(emb)
    for k, v in got.items():
        assert v == pytest.approx(0.0, abs=1e-7), k


def test_gap_invariant_to_order_and_rotation():
    emb = make_emb(n=90, d=10, c=6, seed=7)
    base = modality_gap.modality_gap(emb)
    assert_same(base, modality_gap.modality_gap(permuted(emb)), rtol=1e-7, atol=1e-9)
    # Sliced W2 uses fixed random directions: rotation invariant only in expectation.
    assert_same(base, modality_gap.modality_gap(rotated(emb, rotation(10))), rtol=1e-7, atol=1e-9, skip={"gap_dist_sw"})


def test_gap_subsamples_above_threshold_deterministically(monkeypatch):
    emb = make_emb(n=200, d=6, c=4, seed=8)
    full = modality_gap.modality_gap(emb)
    monkeypatch.setattr(modality_gap, "OT_MAX_POINTS", 60)
    monkeypatch.setattr(modality_gap, "SW_MAX_POINTS", 80)
    a, b = modality_gap.modality_gap(emb), modality_gap.modality_gap(emb)
    assert a == b
    assert a["gap_centroid"] == full["gap_centroid"] and a["gap_dist_fd"] == full["gap_dist_fd"]
    assert a["gap_dist_ot"] != full["gap_dist_ot"] and np.isfinite(a["gap_dist_ot"])
    assert a["gap_dist_ot"] == pytest.approx(full["gap_dist_ot"], rel=0.5)


# ---------------------------------------------------------------------------------- MIR


def official_mir_layer(vision: np.ndarray, text: np.ndarray) -> float:
    """A port of shikiw/Modality-Integration-Rate: text-centric scaling, replace_outliers_with_median_l2
    (torch.median / torch.std), calculate_fid ("accurate" mode, scipy sqrtm)."""
    v = torch.tensor(vision, dtype=torch.float64)
    t = torch.tensor(text, dtype=torch.float64)
    s = 1.0 / t.norm(p=2, dim=-1).mean(0)
    v, t = s * v, s * t
    for data in (v, t):
        norms = torch.norm(data, p=2, dim=-1)
        out = torch.abs(norms - torch.median(norms)) > 3 * torch.std(norms)
        data[out, :] = torch.median(data, dim=0).values
    return float(reference_frechet(v.numpy(), t.numpy()))


def outlier_data(n, d, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) * 2 + 1
    a[:3] *= 25  # three rows far outside 3 sigma in norm
    return a


def test_mir_final_layer_matches_official_port():
    emb = make_emb(n=160, d=8, c=5, paired=True, seed=9)
    emb.image = outlier_data(160, 8, 1)
    ref = official_mir_layer(emb.image, emb.paired_text)
    got = mir.mir(emb)
    assert got["mir_final"] == pytest.approx(np.log10(ref), rel=1e-8)
    assert got["mir"] == got["mir_final"]
    # the outliers matter: without replacement the value differs
    no_repl = _linalg.frechet_distance(emb.image / np.linalg.norm(emb.paired_text, axis=1).mean(),
                                       emb.paired_text / np.linalg.norm(emb.paired_text, axis=1).mean())
    assert abs(np.log10(no_repl) - got["mir"]) > 0.01


def test_mir_final_on_class_texts_matches_official_port_on_repeated_rows():
    # Without captions the paired text is each image's class text; MIR works on the C distinct
    # rows with their counts, and must equal the official code run on the N repeated rows,
    # outlier replacement included (class 0's text is far outside 3 sigma in norm).
    emb = make_emb(n=200, d=8, c=6, seed=17)
    emb.text = emb.text.copy()
    emb.text[0] *= 30
    emb.labels = np.where(np.arange(200) < 8, 0, np.maximum(emb.labels, 1))  # class 0 rare: an outlier
    ref = official_mir_layer(emb.image, emb.text[emb.labels])  # scipy's sqrtm: ~1e-8 relative rounding
    assert 10 ** mir.mir(emb)["mir_final"] == pytest.approx(ref, rel=1e-7)


def test_mir_sums_aligned_layers():
    rng = np.random.default_rng(10)
    n = 150
    il = [outlier_data(n, 6, 2), rng.standard_normal((n, 6)), rng.standard_normal((n, 4)) + 2]
    tl = [rng.standard_normal((n, 6)) * 3, rng.standard_normal((n, 6)) - 1, rng.standard_normal((n, 4))]
    emb = make_emb(n=n, d=8, c=5, paired=True, seed=11, layers=(il, tl))
    total = sum(official_mir_layer(a, b) for a, b in zip(il, tl))
    got = mir.mir(emb)
    assert got["mir"] == pytest.approx(np.log10(total), rel=1e-8)
    assert got["mir_final"] == pytest.approx(np.log10(official_mir_layer(emb.image, emb.paired_text)), rel=1e-8)


def test_mir_class_rows_are_expanded_and_misaligned_layers_fall_back():
    rng = np.random.default_rng(12)
    emb = make_emb(n=100, d=8, c=5, seed=13)
    il = [rng.standard_normal((100, 6))]
    tl = [rng.standard_normal((5, 6))]  # one row per class
    emb.image_layers, emb.text_layers, emb.text_layer_rows = il, tl, "classes"
    assert mir.mir(emb)["mir"] == pytest.approx(np.log10(mir.layer_fd(il[0], tl[0][emb.labels])), rel=1e-12)
    emb.text_layers = [rng.standard_normal((5, 7))]  # widths differ: final embeddings only
    got = mir.mir(emb)
    assert got["mir"] == got["mir_final"]
    # advisor.embed writes one text row per (template, class), templates outer: averaged per class
    prompts = rng.standard_normal((3 * 5, 6))
    emb.text_layers, emb.text_layer_rows = [prompts], "prompts"
    per_class = np.stack([prompts[[c, 5 + c, 10 + c]].mean(0) for c in range(5)])
    assert mir.mir(emb)["mir"] == pytest.approx(np.log10(mir.layer_fd(il[0], per_class[emb.labels])), rel=1e-12)


def test_mir_unpaired_text_rows_are_never_reinterpreted_by_their_count(tmp_path):
    """Issue 16: unpaired per-layer text rows whose number is a multiple of the class count
    were averaged as (template, class) prompts. A file that does not say what its rows are is
    read as unpaired (the official code's reading): MIR must equal the unpaired reference, for
    that count and for one row more alike."""
    from advisor.embeddings_file import read

    rng = np.random.default_rng(21)
    emb = make_emb(n=90, d=6, c=5, seed=22)
    il = [rng.standard_normal((90, 6)) + 1.0]
    for m in (40, 41):  # 40 = 8 x 5 classes: the shape that used to be taken for prompts
        tl = rng.standard_normal((m, 6)) * 2.0
        path = tmp_path / f"unpaired{m}.npz"
        np.savez(path, image=emb.image, text=emb.text, labels=emb.labels,
                 image_layers=np.stack(il), text_layers=tl[None])
        loaded = read(path)
        assert loaded.text_layer_rows == "unpaired"
        expected = np.log10(official_mir_layer(il[0], tl))
        assert mir.mir(loaded)["mir"] == pytest.approx(expected, rel=1e-8)
    # saying "prompts" explicitly is what makes the rows (template, class) prompts
    np.savez(path, image=emb.image, text=emb.text, labels=emb.labels, image_layers=np.stack(il),
             text_layers=tl[:40][None], text_layer_rows=np.asarray("prompts"))
    per_class = tl[:40].reshape(8, 5, 6).mean(0)
    got = mir.mir(read(path))["mir"]
    assert got == pytest.approx(np.log10(official_mir_layer(il[0], per_class[emb.labels])), rel=1e-8)


def test_mir_keeps_every_row_of_unit_norm_inputs():
    # All norms are 1 up to float32 rounding: no row is an outlier (our rounding floor).
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = rng.standard_normal((2000, 64)).astype(np.float32) + 0.5
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    assert (np.abs(norms - np.sort(norms)[999]) > 3 * norms.std(ddof=1)).sum() > 0  # the bare 3-sigma rule fires
    np.testing.assert_array_equal(mir.replace_outliers_with_median(x), x.astype(np.float64))
    s = 1 / np.linalg.norm(t.astype(np.float64), axis=1).mean()
    assert mir.layer_fd(x, t) == pytest.approx(_linalg.frechet_distance(x * s, t * s), rel=1e-12)


def test_mir_with_fewer_samples_than_dims_is_finite_and_real():
    emb = make_emb(n=20, d=64, c=4, seed=14)
    got = mir.mir(emb)
    assert all(isinstance(v, float) and np.isfinite(v) for v in got.values())
    emb = make_emb(n=20, d=64, c=4, seed=14, paired=True)
    assert np.isfinite(mir.mir(emb)["mir"])


def test_mir_invariant_to_order_and_rotation_without_outliers():
    # Norms (hence outlier detection) are rotation invariant; the coordinate-wise median that
    # replaces outliers is not, so rotation invariance holds only when no row is replaced.
    emb = make_emb(n=120, d=8, c=5, paired=True, seed=15, spread=0.3)
    emb.image = np.random.default_rng(0).standard_normal((120, 8))
    base = mir.mir(emb)
    assert_same(base, mir.mir(permuted(emb)), rtol=1e-9)
    assert_same(base, mir.mir(rotated(emb, rotation(8))), rtol=1e-9)


# ---------------------------------------------------------------------------------- MDS


def test_mds_matches_loop_reference():
    emb = make_emb(n=40, d=12, c=4, seed=16)
    x, t = norm_rows(emb.image), norm_rows(emb.text)[emb.labels]
    n, d = x.shape
    scores = []
    for j in range(d):
        s = 0.0
        for i in range(n):
            s += abs(x[i, j]) / (abs(x[i, j]) + abs(t[i, j]) + 1e-8)
        scores.append(s / n)
    scores = np.array(scores)
    mu, sd = scores.mean(), scores.std()
    got = mds.mds(emb)
    assert got["mds_img_frac"] == pytest.approx(np.sum(scores > mu + sd) / d)
    assert got["mds_text_frac"] == pytest.approx(np.sum(scores < mu - sd) / d)
    assert got["mds_cross_frac"] == pytest.approx(1 - got["mds_img_frac"] - got["mds_text_frac"])
    assert got["mds_mean_dev"] == pytest.approx(np.mean(np.abs(scores - 0.5)), abs=1e-12)


def test_mds_hand_case():
    # dim 0 image only, dim 1 text only, dims 2..7 shared equally:
    # scores [1, 0, .5 x 6], mu .5, sigma .25 -> one image-, one text-, six cross-dominant dims.
    img = np.zeros((3, 8)); txt = np.zeros((3, 8))
    img[:, 0] = 1; txt[:, 1] = 1
    img[:, 2:] = 1; txt[:, 2:] = 1
    emb = Embeddings(image=img, text=txt[:2], labels=np.array([0, 1, 0]), class_names=["a", "b"])
    got = mds.mds(emb)
    assert got["mds_img_frac"] == 1 / 8 and got["mds_text_frac"] == 1 / 8 and got["mds_cross_frac"] == 6 / 8
    assert got["mds_mean_dev"] == pytest.approx(0.125, abs=1e-6)


def test_mds_order_invariant_but_not_rotation_invariant():
    emb = make_emb(n=100, d=16, c=5, seed=17)
    base = mds.mds(emb)
    assert_same(base, mds.mds(permuted(emb)))
    assert mds.mds(rotated(emb, rotation(16)))["mds_mean_dev"] != pytest.approx(base["mds_mean_dev"], rel=1e-6)


# ---------------------------------------------------------------------------------- zero-shot


def test_zero_shot_matches_loop_and_hand_case():
    emb = make_emb(n=70, d=5, c=6, seed=18, spread=2.0)
    x, t = norm_rows(emb.image), norm_rows(emb.text)
    right = 0
    for i in range(len(x)):
        sims = [float(np.dot(x[i], t[k])) for k in range(len(t))]
        right += int(max(range(len(t)), key=lambda k: sims[k]) == emb.labels[i])
    acc = zero_shot.zero_shot_accuracy(emb)
    assert acc == pytest.approx(right / len(x))
    assert 0 < acc < 1
    # texts normalised: a long text vector must not win by its length
    emb = Embeddings(image=np.array([[1.0, 0.1], [0.1, 1.0]]), text=np.array([[1.0, 0.0], [0.0, 100.0]]),
                     labels=np.array([0, 1]), class_names=["a", "b"])
    assert zero_shot.zero_shot_accuracy(emb) == 1.0


# ---------------------------------------------------------------------------------- transferability


def features(n=150, d=12, c=4, seed=19):
    emb = make_emb(n=n, d=d, c=c, seed=seed, spread=1.5)
    return norm_rows(emb.image), emb.labels


def test_h_score_matches_official_form():
    f, y = features()
    g = np.zeros_like(f)
    for k in set(y.tolist()):
        g[y == k] = f[y == k].mean(0)
    ref = np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))
    assert tr.h_score(f, y) == pytest.approx(ref, rel=1e-8)


def logme_paper(f, y_vec, eps=0.0, iters=500):
    """LogME evidence for one target from the paper's equations: A = aI + b F^T F,
    m = b A^-1 F^T y, gamma = sum b s/(a + b s), a = gamma/m^T m, b = (N - gamma)/||y - F m||^2
    (``eps`` added to both denominators, as the official code does, keeps N < D finite)."""
    n, d = f.shape
    s = np.linalg.eigvalsh(f.T @ f).clip(0)
    a, b = 1.0, 1.0
    for _ in range(iters):
        A = a * np.eye(d) + b * f.T @ f
        m = b * np.linalg.solve(A, f.T @ y_vec)
        gamma = np.sum(b * s / (a + b * s))
        a_new, b_new = gamma / (m @ m + eps), (n - gamma) / (np.sum((y_vec - f @ m) ** 2) + eps)
        if abs(a_new / b_new - a / b) < 1e-13 * (a / b):
            a, b = a_new, b_new
            break
        a, b = a_new, b_new
    A = a * np.eye(d) + b * f.T @ f
    m = b * np.linalg.solve(A, f.T @ y_vec)
    ev = (d / 2 * np.log(a) + n / 2 * np.log(b) - b / 2 * np.sum((y_vec - f @ m) ** 2) - a / 2 * m @ m
          - 0.5 * np.linalg.slogdet(A)[1] - n / 2 * np.log(2 * np.pi))
    return ev / n


@pytest.mark.parametrize("n,d,eps", [(150, 12, 0.0), (20, 40, 1e-5)])
def test_logme_converged_matches_paper_equations(n, d, eps):
    # (20, 40): N < D, the features interpolate the labels; without eps beta grows without bound.
    f, y = features(n=n, d=d)
    ref = np.mean([logme_paper(f, (y == k).astype(float), eps) for k in np.unique(y)])
    got = tr.logme(f, y, max_iter=2000, tol=1e-14, eps=eps)
    assert got == pytest.approx(ref, rel=1e-6)


def test_logme_default_matches_official_fixed_point_loop():
    """A per-class port of thuml/LogME ``_fit_fixed_point`` (full-rank features, N > D)."""
    f, y = features(n=200, d=10, c=5, seed=20)
    n, d = f.shape
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    sigma = (s ** 2).reshape(-1, 1)
    evidences = []
    for k in range(int(y.max()) + 1):
        y_ = (y == k).astype(float).reshape(-1, 1)
        x = u.T @ y_
        x2 = x ** 2
        res_x2 = (y_ ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
              - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(ev / n)
    assert tr.logme(f, y) == pytest.approx(np.mean(evidences), rel=1e-9)


def test_shared_work_follows_replaced_arrays():
    emb = make_emb(n=80, d=6, c=4, seed=30)
    first = iimm.iimm(emb)["iimm"]
    assert _linalg.unit_images(emb) is _linalg.unit_images(emb)  # computed once
    emb.image = np.random.default_rng(1).standard_normal(emb.image.shape)  # replaced, not modified in place
    assert iimm.iimm(emb)["iimm"] != pytest.approx(first)
    fresh = Embeddings(image=emb.image, text=emb.text, labels=emb.labels, class_names=emb.class_names)
    assert iimm.iimm(emb)["iimm"] == iimm.iimm(fresh)["iimm"]


@pytest.mark.parametrize("n,c,seed", [(40, 3, 0), (300, 7, 1), (500, 16, 2), (257, 5, 3)])
def test_exact_ot_to_atoms_equals_network_simplex(n, c, seed):
    import ot

    from advisor_plugins.metrics._transport import exact_ot_to_atoms

    rng = np.random.default_rng(seed)
    x, t = rng.standard_normal((n, 6)), rng.standard_normal((c, 6)) * 2
    counts = np.bincount(rng.integers(0, c, n), minlength=c)  # some may be 0
    cost = ot.dist(x, t)
    assert exact_ot_to_atoms(cost, counts) == pytest.approx(ot.emd2(np.full(n, 1 / n), counts / n, cost), rel=1e-10)


def test_gap_dist_ot_with_many_classes_uses_pot_and_matches_assignment():
    from advisor_plugins.metrics._transport import MAX_ATOMS

    emb = make_emb(n=60, d=5, c=MAX_ATOMS + 4, seed=8)
    x, t = norm_rows(emb.image), norm_rows(emb.text)
    xc, tc = x - x.mean(0), t[emb.labels] - t[emb.labels].mean(0)
    cost = ((xc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    assert modality_gap.modality_gap(emb)["gap_dist_ot"] == pytest.approx(cost[r, c].mean(), rel=1e-9)


def official_gbc(f, y, pca_components=64):
    """Pándy et al.'s official pipeline (google-research stable_transfer): sklearn PCA to 64
    components (full SVD), then ``get_gbc_score(..., 'spherical')``, written out as its loops."""
    from sklearn.decomposition import PCA

    k = min(pca_components, *f.shape)
    z = PCA(n_components=k, svd_solver="full").fit_transform(f)
    stats = {}
    for c in np.unique(y):
        cz = z[y == c]
        stats[c] = (cz.mean(0), np.mean(np.maximum(cz.var(0), 1e-4)))  # spherical: mean variance
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 != c2:
                (m1, s1), (m2, s2) = stats[c1], stats[c2]
                avg = (s1 + s2) / 2
                first = np.sum((m1 - m2) ** 2 / avg) / 8
                second = np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2))
                total += np.exp(-(first + 0.5 * second))
    return -total


@pytest.mark.parametrize("n,d,c", [(300, 96, 5), (120, 8, 5)])
def test_gbc_matches_official_pca_and_spherical_pipeline(n, d, c):
    f, y = features(n=n, d=d, c=c, seed=21)
    value, log10 = tr.gbc(f, y)
    ref = official_gbc(f, y)
    assert value == pytest.approx(ref, rel=1e-8)
    assert log10 == pytest.approx(np.log10(-ref), rel=1e-8)


def test_gbc_is_informative_in_hundreds_of_dimensions():
    """Issue 16: without the PCA step GBC underflowed to ~0 in 384-512 dimensions. With it, two
    tasks of different class separation get clearly non-zero, different values, and gbc_log10
    stays finite even where exp(-BD) underflows."""
    rng = np.random.default_rng(5)
    values = []
    for sep in (0.2, 0.3):
        centres = rng.standard_normal((10, 384)) * sep / np.sqrt(384)
        y = np.repeat(np.arange(10), 100)
        f = norm_rows(centres[y] + rng.standard_normal((1000, 384)) / np.sqrt(384))
        value, log10 = tr.gbc(f, y)
        assert abs(value) > 1e-6 and np.isfinite(log10)
        values.append(value)
    assert values[1] > values[0]  # better separated classes: less overlap, GBC nearer 0
    far = norm_rows(np.eye(20)[np.repeat(np.arange(20), 5)] * 50 + rng.standard_normal((100, 20)) * 1e-3)
    value, log10 = tr.gbc(far, np.repeat(np.arange(20), 5))
    assert value == 0.0 and np.isfinite(log10) and log10 < -300


def test_transrate_matches_official_coding_rate():
    f, y = features(n=90, d=20, c=6, seed=22)  # classes of ~15 < d: exercises the Sylvester path

    def rate(z, eps=1e-4):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + 1 / (n * eps) * z.T @ z)[1]

    z = f - f.mean(0, keepdims=True)
    ref = rate(z) - sum(rate(z[y == k]) for k in range(int(y.max()) + 1)) / (int(y.max()) + 1)
    assert tr.transrate(f, y) == pytest.approx(ref, rel=1e-9)


def knn_reference(f, y, k, queries):
    right = 0
    for i in queries:
        sims = [(float(np.dot(f[i], f[j])), j) for j in range(len(f)) if j != i]
        sims.sort(key=lambda s: -s[0])
        neigh = [int(y[j]) for _, j in sims[:k]]
        counts = {c: neigh.count(c) for c in neigh}
        best = max(counts.values())
        winner = next(c for c in neigh if counts[c] == best)  # tie: the class of the nearest
        right += int(winner == y[i])
    return right / len(queries)


def test_knn_loo_matches_direct_loops():
    f, y = features(n=80, d=6, c=4, seed=23)
    got = tr.knn_loo(f, y)
    for k in (1, 5):
        assert got[k] == pytest.approx(knn_reference(f, y, k, range(len(f))))
    assert 0 < got[1] < 1


def test_knn_loo_subsamples_queries_against_all_points():
    f, y = features(n=90, d=6, c=3, seed=24)
    q = np.sort(np.random.default_rng(0).choice(90, size=25, replace=False))
    got = tr.knn_loo(f, y, max_queries=25)
    assert got[1] == pytest.approx(knn_reference(f, y, 1, q))
    assert got[5] == pytest.approx(knn_reference(f, y, 5, q))


def test_transferability_invariances():
    emb = make_emb(n=120, d=10, c=4, seed=25, spread=1.5)
    f, y = norm_rows(emb.image), emb.labels
    p = np.random.default_rng(1).permutation(len(y))
    q = rotation(10)
    gbc = lambda a, b: tr.gbc(a, b)[0]  # noqa: E731
    for fn in (tr.h_score, tr.logme, tr.transrate, gbc, lambda a, b: tr.knn_loo(a, b)[5]):
        assert fn(f[p], y[p]) == pytest.approx(fn(f, y), rel=1e-7)
    # GBC: PCA and spherical Gaussians are rotation invariant (its version 1 was not).
    for fn in (tr.h_score, tr.transrate, gbc, lambda a, b: tr.knn_loo(a, b)[1]):
        assert fn(f @ q, y) == pytest.approx(fn(f, y), rel=1e-7)
    # LogME's fixed-point stopping rule is rotation invariant too (eigenvalues, projections).
    assert tr.logme(f @ q, y) == pytest.approx(tr.logme(f, y), rel=1e-7)
