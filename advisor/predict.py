"""The learned predictor: LightGBM over the run history, and its honest evaluation.

One row of the history (one fine-tuning run) becomes one feature vector and three targets:

- ``id_gain``: in-domain accuracy after fine-tuning minus the zero-shot accuracy before;
- ``ood_change``: mean over the run's out-of-domain reference sets of (after - before); negative
  means forgetting;
- ``cost``: natural log of the training wall time in seconds (``exp`` gives seconds back). The
  log keeps a 2 s prompt-learning run and a 2000 s full fine-tune on one scale; wall seconds
  (not seconds per image) because that is what a ``--budget`` is spent in.

Features are every signal present in the history (``sig:<name>``, so a third-party metric
becomes a feature at the next ``advisor predictor train`` with no code change), model and
dataset descriptors, the method (categorical), shots and the device kind. Missing values are
NaN, which LightGBM routes natively.

``AdvisorPredictor`` follows scikit-learn conventions (constructor arguments are
hyper-parameters only, ``fit`` returns self, learned attributes end in ``_``). Uncertainty comes
from a bagged ensemble: ``n_bags`` LightGBM models on bootstrap resamples; the spread of their
predictions is the model uncertainty, and the out-of-bag residuals give an interval that also
covers run-to-run noise. Contributions are the SHAP values LightGBM's ``pred_contrib=True``
gives, averaged over the bags. The fitted state (``FittedPredictor``) serialises to one JSON
document holding each booster's text format (``model_to_string``); never pickle. Reading it back
(``TreeEnsemble``) evaluates that text format with numpy, so ``advisor recommend`` needs neither
LightGBM nor scikit-learn; tests check it against LightGBM's own predictions and contributions.

Evaluation is leave-one-dataset-out (``evaluate_lodo``): for each dataset, the feature schema,
the predictor and every baseline are fitted on the runs of all *other* datasets only, then
scored on the held-out dataset's runs (all shots and seeds).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import PredictorError
from .specs import stable_hash

#: Version of the JSON document a predictor is saved as.
FORMAT = "advisor-predictor/1"
#: The three regression targets, in column order of ``targets_matrix``.
TARGETS: tuple[str, ...] = ("id_gain", "ood_change", "cost")
#: The signal the IIMM paper's heuristic (and the IIMM-only baseline) uses.
IIMM_SIGNAL = "iimm"
#: Below this much history the predictor is not trained; recommend falls back to the IIMM heuristic.
MIN_RUNS = 10
MIN_DATASETS = 3
#: Known method order used to break ties and for fallbacks (third-party tuners come after).
KNOWN_METHODS: tuple[str, ...] = ("full", "lora", "coop", "contcoop", "tpc_cma")
#: Non-signal features, in order. Categorical ones are listed in CATEGORICAL.
CORE_FEATURES: tuple[str, ...] = (
    "method",
    "shots",
    "device",
    "model_family",
    "model_params",
    "model_embed_dim",
    "model_image_size",
    "ds_n_classes",
    "ds_n_train",
    "ds_mean_side_px",
    "ds_is_grayscale",
)
CATEGORICAL: tuple[str, ...] = ("method", "device", "model_family")
SIGNAL_PREFIX = "sig:"
DOMAIN_PREFIX = "ds_domain:"


# ------------------------------------------------------------------------------------------
# History rows -> identities and targets
# ------------------------------------------------------------------------------------------


def _as_dict(v: Any) -> dict:
    """Rows may carry JSON columns already decoded or still as text."""
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return dict(v) if isinstance(v, Mapping) else {}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def row_dataset(row: Mapping[str, Any]) -> str:
    """The dataset a run belongs to, for leave-one-dataset-out: its name (all fingerprints,
    shots and seeds of one name are one dataset, so nothing of it leaks into training)."""
    return str(_as_dict(row.get("dataset_desc")).get("name") or row.get("dataset") or "?")


def row_model(row: Mapping[str, Any]) -> str:
    """``name|pretrained|image_size`` of the run's model (the history's model key)."""
    d = _as_dict(row.get("model_desc"))
    name = d.get("name") or row.get("model") or "?"
    pretrained = d.get("pretrained", row.get("pretrained")) or ""
    size = d.get("image_size") or ""
    return f"{name}|{pretrained}|{size}"


def row_method(row: Mapping[str, Any]) -> str:
    return str(row.get("method") or "?")


def row_shots(row: Mapping[str, Any]) -> int | None:
    s = row.get("shots")
    return None if s is None or (isinstance(s, float) and math.isnan(s)) else int(s)


def row_targets(row: Mapping[str, Any]) -> dict[str, float]:
    """The three measured targets of one run (NaN when the run lacks what a target needs)."""
    before, after = _num(row.get("id_acc_before")), _num(row.get("id_acc_after"))
    ob, oa = _as_dict(row.get("ood_before")), _as_dict(row.get("ood_after"))
    diffs = [_num(oa[k]) - _num(ob[k]) for k in ob if k in oa]
    diffs = [d for d in diffs if math.isfinite(d)]
    wall = _num(row.get("wall_time_s"))
    return {
        "id_gain": after - before,
        "ood_change": float(np.mean(diffs)) if diffs else math.nan,
        "cost": math.log(wall) if wall > 0 else math.nan,
    }


def targets_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(n_rows, len(TARGETS)) measured targets."""
    return np.array([[row_targets(r)[t] for t in TARGETS] for r in rows], dtype=float).reshape(len(rows), len(TARGETS))


def training_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """Identifies exactly which runs (and their measurements and signals) a predictor saw."""
    items = []
    for r in rows:
        t = row_targets(r)
        items.append(
            [
                str(r.get("run_id") or r.get("id") or ""),
                row_model(r),
                row_dataset(r),
                row_method(r),
                row_shots(r),
                r.get("seed"),
                [None if math.isnan(t[k]) else round(t[k], 9) for k in TARGETS],
                {k: round(v, 9) for k, v in sorted(_signals(r).items())},
            ]
        )
    items.sort(key=lambda x: json.dumps(x, default=str))
    return stable_hash(items)


def _signals(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in _as_dict(row.get("signals")).items():
        f = _num(v)
        if not math.isnan(f):
            out[str(k)] = f
    return out


def _device_kind(v: Any) -> str | None:
    return str(v).split(":", 1)[0] if v else None


# ------------------------------------------------------------------------------------------
# Feature schema: which columns, which categories
# ------------------------------------------------------------------------------------------


@dataclass
class FeatureSchema:
    """The columns of the feature matrix, learned from a set of training rows.

    Built from the *training* rows only (in LODO, the held-out dataset's signals, domain tags and
    categories never shape the schema). Unknown categories map to NaN (missing).
    """

    signals: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "FeatureSchema":
        signals: set[str] = set()
        domains: set[str] = set()
        cats: dict[str, set[str]] = {c: set() for c in CATEGORICAL}
        for r in rows:
            signals.update(_signals(r))
            domains.update(str(t) for t in (_as_dict(r.get("dataset_desc")).get("domain") or []))
            for c, v in _core_values(r).items():
                if c in cats and v is not None:
                    cats[c].add(str(v))
        return cls(sorted(signals), sorted(domains), {c: sorted(v) for c, v in cats.items()})

    @property
    def names(self) -> list[str]:
        return (
            list(CORE_FEATURES)
            + [DOMAIN_PREFIX + d for d in self.domains]
            + [SIGNAL_PREFIX + s for s in self.signals]
        )

    @property
    def categorical_indices(self) -> list[int]:
        names = self.names
        return [names.index(c) for c in CATEGORICAL]

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (history rows or recommendation cases of the same shape) -> (n, n_features)."""
        X = np.full((len(rows), len(self.names)), np.nan, dtype=float)
        n_core = len(CORE_FEATURES)
        for i, r in enumerate(rows):
            core = _core_values(r)
            for j, c in enumerate(CORE_FEATURES):
                v = core.get(c)
                if c in CATEGORICAL:
                    cats = self.categories.get(c, [])
                    X[i, j] = cats.index(str(v)) if v is not None and str(v) in cats else np.nan
                else:
                    X[i, j] = _num(v)
            tags = {str(t) for t in (_as_dict(r.get("dataset_desc")).get("domain") or [])}
            for j, d in enumerate(self.domains):
                X[i, n_core + j] = 1.0 if d in tags else 0.0
            sig = _signals(r)
            off = n_core + len(self.domains)
            for j, s in enumerate(self.signals):
                X[i, off + j] = sig.get(s, np.nan)
        return X

    def to_dict(self) -> dict[str, Any]:
        return {"signals": self.signals, "domains": self.domains, "categories": self.categories}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
        return cls(list(d["signals"]), list(d["domains"]), {k: list(v) for k, v in d["categories"].items()})


def _core_values(r: Mapping[str, Any]) -> dict[str, Any]:
    m = _as_dict(r.get("model_desc"))
    d = _as_dict(r.get("dataset_desc"))
    family = m.get("family") or m.get("architecture") or m.get("name") or r.get("model")
    gray = d.get("is_grayscale")
    return {
        "method": r.get("method"),
        "shots": row_shots(r),
        "device": _device_kind(r.get("device")),
        "model_family": family,
        "model_params": m.get("params"),
        "model_embed_dim": m.get("embed_dim"),
        "model_image_size": m.get("image_size"),
        "ds_n_classes": d.get("n_classes"),
        "ds_n_train": d.get("n_train"),
        "ds_mean_side_px": d.get("mean_side_px"),
        "ds_is_grayscale": None if gray is None else float(bool(gray)),
    }


def pretty_feature(name: str) -> str:
    """``sig:iimm`` -> ``iimm``; ``ds_domain:digits`` -> ``domain=digits``."""
    if name.startswith(SIGNAL_PREFIX):
        return name[len(SIGNAL_PREFIX):]
    if name.startswith(DOMAIN_PREFIX):
        return "domain=" + name[len(DOMAIN_PREFIX):]
    return name


# ------------------------------------------------------------------------------------------
# LightGBM text models, evaluated with numpy
# ------------------------------------------------------------------------------------------

_ZERO = 1e-35  # LightGBM's kZeroThreshold


class TreeEnsemble:
    """A LightGBM regression model read from its text format and evaluated with numpy.

    Reading a stored predictor then needs neither LightGBM nor scikit-learn (together about
    1.5 s of imports), which keeps ``advisor recommend`` on a known pair fast. All trees are
    flattened into global node and leaf arrays and walked together, with LightGBM's
    NumericalDecision/CategoricalDecision rules (NaN and zero routing, categorical bitsets).
    Contributions are the exact path-dependent TreeSHAP values LightGBM's ``pred_contrib``
    computes (Lundberg et al. 2018, Algorithm 2), evaluated per leaf for all leaves and rows at
    once: a feature split on several times along a path is merged into one path element, which
    is what the recursive algorithm's unwind/re-extend step does. ``tests/test_predict.py``
    checks both against LightGBM itself; ``as_booster()`` gives the real ``lightgbm.Booster``.
    """

    _KEYS = ("split_feature", "threshold", "decision_type", "left_child", "right_child",
             "leaf_value", "leaf_count", "internal_count")

    def __init__(self, text: str) -> None:
        self.text = text
        header, _, body = text.partition("\nTree=")
        head = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
        objective = head.get("objective", "regression").split()[0]
        if objective not in ("regression", "regression_l2", "l2"):
            raise PredictorError(f"stored LightGBM model has objective {objective!r}; run `advisor predictor train`")
        self.n_features = int(head.get("max_feature_idx", "-1")) + 1
        body = body.split("\nend of trees", 1)[0]
        trees = [dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
                 for block in (("Tree=" + body).split("\nTree=") if body else [])]
        if any(t.get("is_linear", "0").strip() not in ("0", "") for t in trees):
            raise PredictorError("linear LightGBM trees are not supported; run `advisor predictor train`")
        nl = np.array([int(t["num_leaves"]) for t in trees], dtype=np.int64)
        self.n_trees = len(trees)
        # one numpy conversion per field for the whole ensemble
        cols = {k: " ".join(t.get(k, "") for t in trees).split() for k in self._KEYS}
        if any(len(cols[k]) != int((nl - 1).sum()) for k in self._KEYS[:5]) or \
                any(len(cols[k]) != int(nl.sum()) for k in ("leaf_value", "leaf_count")):
            raise PredictorError("stored LightGBM model is damaged; run `advisor predictor train`")
        def ints(k: str) -> np.ndarray:  # map() then one array: faster than numpy parsing strings
            return np.array(list(map(int, cols[k])), dtype=np.int64)

        def floats(k: str) -> np.ndarray:
            return np.array(list(map(float, cols[k])), dtype=np.float64)

        sf, dt, left, right = ints("split_feature"), ints("decision_type"), ints("left_child"), ints("right_child")
        self.node_feature = sf
        self.node_threshold = floats("threshold")
        self.node_categorical = (dt & 1) == 1
        self.node_default_left = (dt & 2) == 2
        self.node_missing = (dt >> 2) & 3
        self.node_count = floats("internal_count")
        self.leaf_value = floats("leaf_value")
        self.leaf_count = floats("leaf_count")
        node_base = np.concatenate([[0], np.cumsum(nl - 1)[:-1]]).astype(np.int64)
        leaf_base = np.concatenate([[0], np.cumsum(nl)[:-1]]).astype(np.int64)
        tree_of_node = np.repeat(np.arange(self.n_trees), nl - 1)
        tree_of_leaf = np.repeat(np.arange(self.n_trees), nl)

        def glob(child: np.ndarray) -> np.ndarray:  # tree-local child ids -> global (~leaf stays negative)
            return np.where(child >= 0, child + node_base[tree_of_node], ~(~child + leaf_base[tree_of_node]))

        self.node_left, self.node_right = glob(left), glob(right)
        self.roots = np.where(nl > 1, node_base, ~leaf_base)
        multi = nl > 1
        root_count = np.ones(self.n_trees)
        root_count[multi] = self.node_count[node_base[multi]]
        weight = np.where(multi[tree_of_leaf], self.leaf_count / root_count[tree_of_leaf], 1.0)
        self.expected_value = float(np.sum(weight * self.leaf_value))
        cats: dict[int, list[int]] = {}
        for n in np.flatnonzero(self.node_categorical).tolist():  # decode each categorical split's bitset
            t = trees[int(tree_of_node[n])]
            bounds = [int(v) for v in t["cat_boundaries"].split()]
            words = [int(v) for v in t["cat_threshold"].split()]
            k = int(self.node_threshold[n])
            cats[n] = [32 * w + b for w, word in enumerate(words[bounds[k]: bounds[k + 1]])
                       for b in range(word.bit_length()) if (word >> b) & 1]
        width = max([max(c) + 1 for c in cats.values() if c] or [1])
        self.cat_mask = np.zeros((len(sf), width), dtype=bool)
        for n, c in cats.items():
            self.cat_mask[n, c] = True
        self._paths: dict[str, np.ndarray] | None = None

    def _decide(self, nodes: np.ndarray, fval: np.ndarray) -> np.ndarray:
        """Go left? for (node, feature value) pairs, with LightGBM's rules: NaN counts as 0
        unless the node routes missing values; categorical NaN or negative values go right."""
        missing = self.node_missing[nodes]
        f = np.where(np.isnan(fval) & (missing != 2), 0.0, fval)
        is_missing = ((missing == 1) & (np.abs(f) <= _ZERO)) | ((missing == 2) & np.isnan(f))
        with np.errstate(invalid="ignore"):
            out = np.where(is_missing, self.node_default_left[nodes], f <= self.node_threshold[nodes])
        cat = self.node_categorical[nodes]
        if cat.any():
            v = fval[cat]
            with np.errstate(invalid="ignore"):
                c = np.trunc(np.where(np.isnan(v), -1.0, v))  # static_cast<int> truncates toward zero
            ok = (c >= 0) & (c < self.cat_mask.shape[1])
            out[cat] = ok & self.cat_mask[nodes[cat], np.where(ok, c, 0).astype(np.int64)]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Walk every tree for every row at once (one step per depth level)."""
        state = np.repeat(self.roots[:, None], len(X), axis=1)  # (trees, rows)
        rows = np.broadcast_to(np.arange(len(X)), state.shape)
        active = np.flatnonzero(state.ravel() >= 0)
        flat = state.ravel()
        r = rows.ravel()
        while len(active):
            nodes = flat[active]
            go = self._decide(nodes, X[r[active], self.node_feature[nodes]])
            flat[active] = np.where(go, self.node_left[nodes], self.node_right[nodes])
            active = active[flat[active] >= 0]
        return self.leaf_value[~state].sum(axis=0)

    def _leaf_paths(self) -> dict[str, np.ndarray]:
        """Per leaf: its root-to-leaf path and the path's unique features with their cover
        fractions (built on first use: only contributions need them)."""
        if self._paths is not None:
            return self._paths
        L = len(self.leaf_value)
        paths: list[list[tuple[int, bool]]] = [[] for _ in range(L)]
        stack = [(int(r), []) for r in self.roots if r >= 0]
        left, right = self.node_left.tolist(), self.node_right.tolist()
        while stack:
            node, path = stack.pop()
            for child, go_left in ((left[node], True), (right[node], False)):
                p = path + [(node, go_left)]
                if child < 0:
                    paths[~child] = p
                else:
                    stack.append((child, p))
        feat, ncount, lcount = self.node_feature.tolist(), self.node_count.tolist(), self.leaf_count.tolist()
        depth = max([len(p) for p in paths] or [0])
        pn, pl, pv, ps, sfe, sz, ns = [], [], [], [], [], [], []
        zeros: list[dict[int, float]] = []
        for leaf, path in enumerate(paths):
            zero: dict[int, float] = {}
            for k, (n, _) in enumerate(path):
                child = path[k + 1][0] if k + 1 < len(path) else ~leaf
                cover = ncount[child] if child >= 0 else lcount[~child]
                zero[feat[n]] = zero.get(feat[n], 1.0) * cover / ncount[n]
            zeros.append(zero)
        slots = max([len(z) for z in zeros] or [0])
        for path, zero in zip(paths, zeros):
            order = list(zero)  # unique features in first-split order
            pad = depth - len(path)
            pn.append([n for n, _ in path] + [0] * pad)
            pl.append([g for _, g in path] + [True] * pad)
            pv.append([True] * len(path) + [False] * pad)
            ps.append([order.index(feat[n]) for n, _ in path] + [0] * pad)
            sfe.append(order + [0] * (slots - len(order)))
            sz.append([zero[f] for f in order] + [1.0] * (slots - len(order)))
            ns.append(len(order))
        self._paths = {
            "node": np.array(pn, dtype=np.int64).reshape(L, depth),
            "left": np.array(pl, dtype=bool).reshape(L, depth),
            "valid": np.array(pv, dtype=bool).reshape(L, depth),
            "slot": np.array(ps, dtype=np.int64).reshape(L, depth),
            "slot_feature": np.array(sfe, dtype=np.int64).reshape(L, slots),
            "slot_zero": np.array(sz, dtype=np.float64).reshape(L, slots),
            "n_slots": np.array(ns, dtype=np.int64),
        }
        return self._paths

    def contrib(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features + 1) SHAP values, the last column the expected value (as LightGBM)."""
        n = len(X)
        out = np.zeros((n, X.shape[1] + 1))
        out[:, -1] = self.expected_value
        P = self._leaf_paths()
        L, S = P["slot_feature"].shape
        if not L or not S:
            return out
        nodes = np.arange(len(self.node_feature))
        go = self._decide(np.repeat(nodes, n), X[np.tile(np.arange(n), len(nodes)), np.repeat(self.node_feature, n)])
        go = go.reshape(len(nodes), n)
        agree = (go[P["node"]] == P["left"][:, :, None]) | ~P["valid"][:, :, None]  # (L, depth, n)
        one = np.ones((L, S, n), dtype=bool)  # per path element: does the row follow all its splits
        leaves = np.arange(L)
        for j in range(agree.shape[1]):
            one[leaves, P["slot"][:, j]] &= agree[:, j]
        one = one.astype(float)
        n_slots, zero_f, value = P["n_slots"], P["slot_zero"], self.leaf_value
        pw = [np.ones((L, n))] + [np.zeros((L, n)) for _ in range(S)]  # after the root element
        for u in range(S):  # extend every slot (the order does not change the result)
            has = (n_slots > u)[:, None]
            d = u + 1  # elements already on the path
            z, o = zero_f[:, u][:, None], one[:, u]
            new = [p.copy() for p in pw]
            for i in range(d - 1, -1, -1):
                new[i + 1] = new[i + 1] + o * new[i] * (i + 1) / (d + 1)
                new[i] = z * new[i] * (d - i) / (d + 1)
            pw = [np.where(has, a, b) for a, b in zip(new, pw)]
        for D in np.unique(n_slots[n_slots > 0]).tolist():
            g = np.flatnonzero(n_slots == D)
            for u in range(D):  # unwound path sum of slot u
                z, o = zero_f[g, u][:, None], one[g, u]
                nz = o != 0
                safe = np.where(nz, o, 1.0)
                nxt = pw[D][g]
                t_nz = np.zeros((len(g), n))
                t_z = np.zeros((len(g), n))
                for i in range(D - 1, -1, -1):
                    tmp = nxt / ((i + 1) * safe)
                    t_nz += tmp
                    nxt = pw[i][g] - tmp * z * (D - i)
                    t_z += pw[i][g] / (z * (D - i))
                w = np.where(nz, t_nz, t_z) * (D + 1)
                np.add.at(out.T, P["slot_feature"][g, u], w * (o - z) * value[g][:, None])
        return out

    def as_booster(self) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_str=self.text)


# ------------------------------------------------------------------------------------------
# The fitted predictor: what is stored, loaded and asked (numpy only)
# ------------------------------------------------------------------------------------------


class FittedPredictor:
    """A trained predictor: per target, ``n_bags`` tree ensembles plus their out-of-bag residuals,
    the feature schema, and where it came from. ``AdvisorPredictor.fit`` builds one;
    ``from_stored`` reads one from the history without importing LightGBM or scikit-learn."""

    def __init__(self, *, params: dict[str, Any], feature_names: list[str], categorical: list[int], y_ndim: int,
                 ensembles: list[list[TreeEnsemble]], oob_residuals: list[list[float]], n_train: list[int]) -> None:
        self.params = dict(params)
        self.feature_names = list(feature_names)
        self.categorical = list(categorical)
        self.y_ndim = y_ndim
        self.ensembles = ensembles
        self.oob_residuals = oob_residuals
        self.n_train = n_train
        self.schema: FeatureSchema | None = None
        self.target_names: list[str] = []
        self.training_hash = ""
        self.n_runs = 0
        self.datasets: list[str] = []
        self.feature_ranges: dict[str, list[float]] = {}

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_targets(self) -> int:
        return len(self.ensembles)

    @property
    def n_bags(self) -> int:
        return int(self.params.get("n_bags", max((len(e) for e in self.ensembles), default=1)))

    @property
    def interval(self) -> float:
        return float(self.params.get("interval", 0.8))

    def _check(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X has shape {X.shape}, the predictor expects (n, {self.n_features})")
        return X

    def predict_bags(self, X: Any) -> np.ndarray:
        """(n_bags, n, n_targets) predictions of every bag (NaN for a target without models)."""
        X = self._check(X)
        out = np.full((self.n_bags, len(X), self.n_targets), np.nan)
        for t, bags in enumerate(self.ensembles):
            for b, ens in enumerate(bags):
                out[b, :, t] = ens.predict(X)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Mean over the bags: (n,) for a predictor fitted on 1-d ``y``, else (n, n_targets)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(self.predict_bags(X), axis=0)
        return mean[:, 0] if self.y_ndim == 1 else mean

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi), each (n, n_targets): a central ``interval`` band.

        lo/hi add the out-of-bag residual quantiles to the bagged mean (so the band includes
        run-to-run noise, not only model disagreement), widened to cover the bags' own
        quantiles. With fewer than 5 out-of-bag residuals only the bags' spread is used.
        """
        bags = self.predict_bags(X)
        a = (1.0 - self.interval) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(bags, axis=0)
            blo = np.nanquantile(bags, a, axis=0)
            bhi = np.nanquantile(bags, 1.0 - a, axis=0)
        lo, hi = blo.copy(), bhi.copy()
        for t, res in enumerate(self.oob_residuals):
            if len(res) >= 5:
                rlo, rhi = np.quantile(res, [a, 1.0 - a])
                lo[:, t] = np.minimum(blo[:, t], mean[:, t] + rlo)
                hi[:, t] = np.maximum(bhi[:, t], mean[:, t] + rhi)
        return mean, lo, hi

    def predict_contrib(self, X: Any, targets: Sequence[int] | None = None) -> np.ndarray:
        """(n, n_targets, n_features + 1) SHAP contributions averaged over the bags; the last
        column is the expected value. ``targets`` limits the work to some target columns
        (the others stay NaN)."""
        X = self._check(X)
        out = np.full((len(X), self.n_targets, self.n_features + 1), np.nan)
        for t, bags in enumerate(self.ensembles):
            if bags and (targets is None or t in targets):
                out[:, t, :] = np.mean([ens.contrib(X) for ens in bags], axis=0)
        return out

    def rows_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix of history rows (or cases of the same shape) under this predictor's
        own schema: re-aligned by name, signals it does not know are ignored."""
        if self.schema is None:
            raise PredictorError("this predictor was fitted on a bare matrix, not on history rows")
        return self.schema.matrix(list(rows))

    def signal_drift(self, signals: Iterable[str]) -> tuple[list[str], list[str]]:
        """(signals the predictor uses that are missing here, signals here it does not use)."""
        have, used = set(signals), set(self.schema.signals if self.schema else [])
        return sorted(used - have), sorted(have - used)

    # -- storage ---------------------------------------------------------------------------

    def to_json(self) -> str:
        """One JSON document: hyper-parameters, schema, and each model in LightGBM's text format."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "params": self.params,
            "feature_names": self.feature_names,
            "categorical_features": self.categorical,
            "y_ndim": self.y_ndim,
            "n_train": self.n_train,
            "oob_residuals": self.oob_residuals,
            "boosters": [[e.text for e in bags] for bags in self.ensembles],
        }
        if self.schema is not None:
            doc.update(schema=self.schema.to_dict(), target_names=self.target_names, training_hash=self.training_hash,
                       n_runs=self.n_runs, datasets=self.datasets, feature_ranges=self.feature_ranges)
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "FittedPredictor":
        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            raise PredictorError("stored predictor is not valid JSON; run `advisor predictor train`") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            fmt = doc.get("format") if isinstance(doc, dict) else None
            raise PredictorError(
                f"stored predictor has format {fmt!r}, this advisor reads {FORMAT!r}; run `advisor predictor train`"
            )
        try:
            fp = cls(params=dict(doc["params"]), feature_names=list(doc["feature_names"]),
                     categorical=[int(i) for i in doc["categorical_features"]], y_ndim=int(doc["y_ndim"]),
                     ensembles=[[TreeEnsemble(s) for s in bags] for bags in doc["boosters"]],
                     oob_residuals=[[float(r) for r in res] for res in doc["oob_residuals"]],
                     n_train=[int(n) for n in doc["n_train"]])
            if "schema" in doc:
                fp.schema = FeatureSchema.from_dict(doc["schema"])
                fp.target_names = list(doc["target_names"])
                fp.training_hash = str(doc["training_hash"])
                fp.n_runs = int(doc["n_runs"])
                fp.datasets = list(doc["datasets"])
                fp.feature_ranges = {k: list(v) for k, v in (doc.get("feature_ranges") or {}).items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PredictorError(f"stored predictor is damaged ({type(exc).__name__}); run `advisor predictor train`") from None
        if any(e.n_features not in (0, fp.n_features) for bags in fp.ensembles for e in bags):
            raise PredictorError("stored predictor's models do not match its feature list; run `advisor predictor train`")
        return fp

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "FittedPredictor":
        """Read what ``History.load_predictor`` returned and check it fits this advisor.

        Rejected with a one-line PredictorError: a damaged or foreign document, a stored feature
        list that differs from the document's, and a predictor whose non-signal features differ
        from what this version of advisor builds. Accepted: differences in *signals* only;
        cases are re-aligned by name (missing signals -> NaN, unknown ones ignored), and
        ``signal_drift`` says which, so callers can warn.
        """
        fp = cls.from_json(stored["blob"])
        features = list(stored.get("features") or fp.feature_names)
        core = [f for f in features if not f.startswith((SIGNAL_PREFIX, DOMAIN_PREFIX))]
        if core != list(CORE_FEATURES):
            missing = sorted(set(CORE_FEATURES) - set(core))
            extra = sorted(set(core) - set(CORE_FEATURES))
            raise PredictorError(
                "stored predictor was trained on other features"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(extra)})" if extra else "")
                + "; run `advisor predictor train`"
            )
        if features != fp.feature_names or fp.schema is None or fp.schema.names != fp.feature_names:
            raise PredictorError("stored predictor's feature list does not match its models; run `advisor predictor train`")
        return fp


def _feature_ranges(schema: FeatureSchema, X: np.ndarray) -> dict[str, list[float]]:
    out = {}
    for j, name in enumerate(schema.names):
        if name.startswith(SIGNAL_PREFIX):
            col = X[:, j][np.isfinite(X[:, j])]
            if len(col):
                out[name] = [float(col.min()), float(col.max())]
    return out


# ------------------------------------------------------------------------------------------
# The scikit-learn estimator
# ------------------------------------------------------------------------------------------


def estimator_class() -> type:
    """The ``AdvisorPredictor`` class, created on first use: it subclasses scikit-learn's
    BaseEstimator, and importing scikit-learn costs about a second that reading a stored
    predictor (``FittedPredictor``) does not need."""
    cls = globals().get("AdvisorPredictor")
    if cls is None:
        cls = globals()["AdvisorPredictor"] = _define_estimator()
    return cls


def __getattr__(name: str) -> Any:
    """``from advisor.predict import AdvisorPredictor`` works as usual (PEP 562)."""
    if name == "AdvisorPredictor":
        return estimator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_estimator() -> type:
    from sklearn.base import BaseEstimator, RegressorMixin

    class AdvisorPredictor(RegressorMixin, BaseEstimator):
        """Bagged LightGBM regressors, one set per target column of ``y``.

        ``fit(X, y)`` takes a numeric matrix (NaN allowed) and ``y`` of shape (n,) or (n, k);
        rows whose target is NaN are left out for that target only. ``fit_rows(rows)`` is the
        history entry point: it learns the feature schema, builds X and the TARGETS matrix, and
        calls ``fit``. The fitted state is ``model_`` (a ``FittedPredictor``).

        The defaults suit histories of tens to hundreds of runs: few leaves, small leaves, one
        thread and fixed seeds (the same history gives the same predictor, bit for bit).
        """

        def __init__(
            self,
            n_estimators: int = 60,
            learning_rate: float = 0.1,
            num_leaves: int = 7,
            min_child_samples: int = 3,
            n_bags: int = 8,
            colsample: float = 0.8,
            reg_lambda: float = 1.0,
            interval: float = 0.8,
            random_state: int = 0,
        ) -> None:
            self.n_estimators = n_estimators
            self.learning_rate = learning_rate
            self.num_leaves = num_leaves
            self.min_child_samples = min_child_samples
            self.n_bags = n_bags
            self.colsample = colsample
            self.reg_lambda = reg_lambda
            self.interval = interval
            self.random_state = random_state

        def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
            tags = super().__sklearn_tags__()
            tags.input_tags.allow_nan = True
            tags.target_tags.multi_output = True
            return tags

        def _lgb_params(self, seed: int) -> dict[str, Any]:
            return {
                "objective": "regression",
                "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves,
                "min_data_in_leaf": self.min_child_samples,
                "min_sum_hessian_in_leaf": 1e-6,
                "min_data_per_group": 1,
                "max_cat_to_onehot": 32,  # one-vs-rest splits: many-vs-many needs far more data
                "cat_smooth": 1.0,
                "cat_l2": 1.0,
                "feature_fraction": self.colsample,
                "lambda_l2": self.reg_lambda,
                "num_threads": 1,
                "deterministic": True,
                "force_row_wise": True,
                "seed": seed,
                "verbosity": -1,
            }

        def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None,
                categorical_features: Sequence[int] | None = None) -> "AdvisorPredictor":
            """Fit ``n_bags`` bootstrap LightGBM models per target column; returns self."""
            import lightgbm as lgb
            from sklearn.utils.validation import validate_data

            if y is None:
                raise ValueError("AdvisorPredictor requires y to be passed, but the target y is None")
            # y is checked by hand: NaN targets are allowed (that row is skipped for that target).
            X = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan")
            y = np.asarray(y, dtype=float)
            if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
                raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},) or ({X.shape[0]}, k)")
            if np.isinf(y).any():
                raise ValueError("Input y contains infinity")
            if not np.isfinite(y).any():
                raise ValueError("Input y contains NaN only: nothing to fit")
            Y = y.reshape(len(y), -1)
            n, p = X.shape
            names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(p)]
            if len(names) != p:
                raise ValueError("feature_names does not match the number of columns of X")
            categorical = sorted(int(i) for i in (categorical_features or []))
            ensembles: list[list[TreeEnsemble]] = []
            residuals: list[list[float]] = []
            n_train: list[int] = []
            for t in range(Y.shape[1]):
                ok = np.flatnonzero(np.isfinite(Y[:, t]))
                n_train.append(int(len(ok)))
                bags: list[TreeEnsemble] = []
                preds = np.full((self.n_bags, n), np.nan)
                if len(ok) >= 2:
                    for b in range(self.n_bags):
                        rng = np.random.RandomState(self.random_state * 1000 + t * 100 + b)
                        idx = ok[rng.randint(0, len(ok), len(ok))] if self.n_bags > 1 else ok
                        ds = lgb.Dataset(
                            X[idx], label=Y[idx, t], categorical_feature=categorical or "auto", free_raw_data=True,
                            params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1},
                        )
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            booster = lgb.train(self._lgb_params(self.random_state + b), ds,
                                                num_boost_round=self.n_estimators)
                        bags.append(TreeEnsemble(booster.model_to_string()))
                        oob = np.setdiff1d(ok, idx)
                        if len(oob):  # num_threads=1: OpenMP start-up costs ~20 ms per call
                            preds[b, oob] = booster.predict(X[oob], num_threads=1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = Y[ok, t] - np.nanmean(preds[:, ok], axis=0) if bags else np.array([])
                ensembles.append(bags)
                residuals.append([float(r) for r in res if np.isfinite(r)])
            self.model_ = FittedPredictor(params=self.get_params(), feature_names=names, categorical=categorical,
                                          y_ndim=y.ndim, ensembles=ensembles, oob_residuals=residuals,
                                          n_train=n_train)
            return self

        def _model(self) -> FittedPredictor:
            from sklearn.utils.validation import check_is_fitted

            check_is_fitted(self, "model_")
            return self.model_

        def _X(self, X: Any) -> np.ndarray:
            from sklearn.utils.validation import validate_data

            self._model()
            return validate_data(self, X, dtype=float, ensure_all_finite="allow-nan", reset=False)

        def predict(self, X: Any) -> np.ndarray:
            """Mean over the bags: (n,) if fitted on 1-d ``y``, else (n, n_targets)."""
            X = self._X(X)
            return self.model_.predict(X)

        def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(mean, lo, hi) per target; see ``FittedPredictor.predict_interval``."""
            X = self._X(X)
            return self.model_.predict_interval(X)

        def predict_contrib(self, X: Any, targets: Sequence[int] | None = None) -> np.ndarray:
            """SHAP contributions per target; see ``FittedPredictor.predict_contrib``."""
            X = self._X(X)
            return self.model_.predict_contrib(X, targets)

        def boosters(self, target: int = 0) -> list[Any]:
            """The real ``lightgbm.Booster`` of every bag for one target."""
            return [e.as_booster() for e in self._model().ensembles[target]]

        # -- history rows ------------------------------------------------------------------

        def fit_rows(self, rows: Sequence[Mapping[str, Any]]) -> "AdvisorPredictor":
            """Learn the schema from ``rows`` and fit the TARGETS on them; returns self."""
            rows = list(rows)
            if not rows:
                raise PredictorError("no runs to train on")
            schema = FeatureSchema.from_rows(rows)
            X = schema.matrix(rows)
            self.fit(X, targets_matrix(rows), feature_names=schema.names,
                     categorical_features=schema.categorical_indices)
            m = self.model_
            m.schema, m.target_names, m.training_hash = schema, list(TARGETS), training_hash(rows)
            m.n_runs, m.datasets = len(rows), sorted({row_dataset(r) for r in rows})
            m.feature_ranges = _feature_ranges(schema, X)
            return self

        def rows_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
            return self._model().rows_matrix(rows)

        def to_json(self) -> str:
            return self._model().to_json()

        @classmethod
        def from_model(cls, model: FittedPredictor) -> "AdvisorPredictor":
            """An estimator around a stored FittedPredictor (its hyper-parameters restored)."""
            est = cls(**model.params)
            est.model_ = model
            est.n_features_in_ = model.n_features
            return est

        @classmethod
        def from_json(cls, text: str) -> "AdvisorPredictor":
            return cls.from_model(FittedPredictor.from_json(text))

    AdvisorPredictor.__module__ = __name__
    AdvisorPredictor.__qualname__ = "AdvisorPredictor"  # importable by name, so copy/pickle work
    return AdvisorPredictor


# ------------------------------------------------------------------------------------------
# Training against a history
# ------------------------------------------------------------------------------------------


def history_ready(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the history is big enough to train on, and a one-line reason if not."""
    usable = [r for r in rows if math.isfinite(row_targets(r)["id_gain"])]
    n_ds = len({row_dataset(r) for r in usable})
    if len(usable) < MIN_RUNS or n_ds < MIN_DATASETS:
        return False, (
            f"the history has {len(usable)} usable runs over {n_ds} datasets; "
            f"a predictor needs at least {MIN_RUNS} runs over {MIN_DATASETS} datasets"
        )
    return True, ""


def train_predictor(
    history: Any,
    *,
    name: str = "default",
    evaluate: bool = True,
    estimator: Any = None,
) -> dict[str, Any]:
    """Fit on every run in ``history`` (an unfitted ``AdvisorPredictor``, default
    hyper-parameters unless ``estimator`` is given), optionally score it leave-one-dataset-out,
    and save it. Returns a summary."""
    from sklearn.base import clone

    rows = history.training_rows()
    ok, why = history_ready(rows)
    if not ok:
        raise PredictorError(f"cannot train: {why}; record more runs with `advisor run`")
    est = clone(estimator) if estimator is not None else estimator_class()()
    model = est.fit_rows(rows).model_
    scores: dict[str, Any] = {"n_runs": model.n_runs, "datasets": model.datasets}
    if evaluate:
        ev = evaluate_lodo(rows, estimator=est)
        scores.update({"targets": ev["targets"], "baselines": ev["baselines"], "n_groups": ev["n_groups"]})
    scores = clean_json(scores)
    pid = history.save_predictor(name, model.to_json(), model.feature_names, model.training_hash, scores)
    return {
        "name": name,
        "id": pid,
        "n_runs": model.n_runs,
        "datasets": model.datasets,
        "n_features": model.n_features,
        "signals": model.schema.signals if model.schema else [],
        "training_hash": model.training_hash,
        "scores": scores,
    }


# ------------------------------------------------------------------------------------------
# Baselines (fitted on training rows, queried per held-out row)
# ------------------------------------------------------------------------------------------


class IIMMLinear:
    """The IIMM paper's heuristic as a baseline: per method, gain ~= a_m + b_m * IIMM (and the
    same for OOD change), least squares on the training runs of that method. A method with
    fewer than two runs (or one distinct IIMM value) predicts its mean."""

    name = "iimm-linear"

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "IIMMLinear":
        self.coef_: dict[tuple[str, str], tuple[float, float]] = {}
        by_m: dict[str, list[tuple[float, dict]]] = {}
        for r in rows:
            x = _signals(r).get(IIMM_SIGNAL, math.nan)
            by_m.setdefault(row_method(r), []).append((x, row_targets(r)))
        for m, pts in by_m.items():
            for t in ("id_gain", "ood_change"):
                xy = np.array([(x, tg[t]) for x, tg in pts if math.isfinite(x) and math.isfinite(tg[t])])
                ys = np.array([tg[t] for _, tg in pts if math.isfinite(tg[t])])
                if len(xy) >= 2 and np.ptp(xy[:, 0]) > 0:
                    b, a = np.polyfit(xy[:, 0], xy[:, 1], 1)
                    self.coef_[(m, t)] = (float(a), float(b))
                elif len(ys):
                    self.coef_[(m, t)] = (float(ys.mean()), 0.0)
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        x = _signals(row).get(IIMM_SIGNAL, math.nan)
        out = {}
        for t in ("id_gain", "ood_change"):
            a, b = self.coef_.get((method, t), (math.nan, 0.0))
            out[t] = a + b * x if b != 0.0 else a
        return out


class SignalKNN:
    """k nearest training runs of the same method, by Euclidean distance between standardised
    signal vectors (plus log2 shots); predicts their mean gain and OOD change. Missing signals
    are imputed with the training mean (0 after standardising)."""

    name = "knn"

    def __init__(self, k: int = 3) -> None:
        self.k = k

    def _vec(self, row: Mapping[str, Any]) -> np.ndarray:
        s = _signals(row)
        shots = row_shots(row)
        v = [s.get(n, math.nan) for n in self.names_] + [math.log2(shots) if shots else math.nan]
        return np.array(v, dtype=float)

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "SignalKNN":
        self.names_ = sorted(set().union(*[_signals(r) for r in rows])) if rows else []
        V = np.array([self._vec(r) for r in rows], dtype=float).reshape(len(rows), len(self.names_) + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mu_ = np.nan_to_num(np.nanmean(V, axis=0)) if len(V) else np.zeros(V.shape[1])
            sd = np.nanstd(V, axis=0) if len(V) else np.ones(V.shape[1])
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.Z_ = np.nan_to_num((V - self.mu_) / self.sd_)
        self.methods_ = np.array([row_method(r) for r in rows])
        self.T_ = np.array([[row_targets(r)[t] for t in ("id_gain", "ood_change")] for r in rows]).reshape(len(rows), 2)
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        idx = np.flatnonzero(self.methods_ == method)
        if not len(idx):
            return {"id_gain": math.nan, "ood_change": math.nan}
        z = np.nan_to_num((self._vec(row) - self.mu_) / self.sd_)
        d = np.linalg.norm(self.Z_[idx] - z, axis=1)
        near = idx[np.argsort(d, kind="stable")[: self.k]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g, o = np.nanmean(self.T_[near], axis=0)
        return {"id_gain": float(g), "ood_change": float(o)}


#: Constant baselines fall back along this order when their method was not run for a group.
_FALLBACK = ("lora", "full", "contcoop", "coop", "tpc_cma")


# ------------------------------------------------------------------------------------------
# Leave-one-dataset-out evaluation
# ------------------------------------------------------------------------------------------


def lodo_folds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[int]]]:
    """(held-out dataset, train indices, test indices): every row of the held-out dataset
    (any model, shots or seed) is in test, none in train."""
    names = [row_dataset(r) for r in rows]
    return [
        (d, [i for i, n in enumerate(names) if n != d], [i for i, n in enumerate(names) if n == d])
        for d in sorted(set(names))
    ]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else math.nan


def _objective_value(g: float, o: float, objective: str) -> float:
    if objective == "gain":
        return g
    if objective == "balanced":
        return g + o
    raise ValueError(objective)


def evaluate_lodo(
    rows: Sequence[Mapping[str, Any]],
    *,
    estimator: Any = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out scores of the predictor and of every baseline, in one loop.

    Per target: Spearman and MAE of predicted vs measured over all held-out runs. Per held-out
    (model, dataset, shots) group with at least two methods measured (seeds averaged): top-1
    accuracy and regret of the recommended method, for the ``gain`` and ``balanced`` objectives.
    """
    rows = list(rows)
    folds = lodo_folds(rows)
    if len(folds) < 2:
        raise PredictorError(
            f"leave-one-dataset-out needs runs on at least 2 datasets (the history has {len(folds)})"
        )
    from sklearn.base import clone

    base = estimator if estimator is not None else estimator_class()()
    Y = targets_matrix(rows)
    pred = {name: np.full((len(rows), len(TARGETS)), np.nan) for name in ("predictor", "iimm-linear", "knn")}
    folds_out = []
    for d, train_idx, test_idx in folds:
        if progress:
            progress(d)
        train = [rows[i] for i in train_idx]
        test = [rows[i] for i in test_idx]
        folds_out.append({"dataset": d, "n_train": len(train), "n_test": len(test)})
        if len({row_dataset(r) for r in train}) < 1 or len(train) < 2:
            continue
        est = clone(base).fit_rows(train)
        pred["predictor"][test_idx] = est.predict(est.rows_matrix(test))
        lin = IIMMLinear().fit(train)
        knn = SignalKNN(knn_k).fit(train)
        for i, r in zip(test_idx, test):
            for name, bl in (("iimm-linear", lin), ("knn", knn)):
                p = bl.predict_row(r, row_method(r))
                pred[name][i, 0], pred[name][i, 1] = p["id_gain"], p["ood_change"]

    targets = {
        t: {
            "spearman": _spearman(pred["predictor"][:, j], Y[:, j]),
            "mae": _mae(pred["predictor"][:, j], Y[:, j]),
            "n": int(np.sum(np.isfinite(Y[:, j]) & np.isfinite(pred["predictor"][:, j]))),
        }
        for j, t in enumerate(TARGETS)
    }
    groups = _groups(rows, Y, pred)
    baselines = []
    for name in ("predictor", "iimm-linear", "knn", "always-lora", "always-full", "random"):
        entry: dict[str, Any] = {"name": name}
        if name in pred:
            for j, t in enumerate(("id_gain", "ood_change")):
                entry[f"{t}_spearman"] = _spearman(pred[name][:, j], Y[:, j])
                entry[f"{t}_mae"] = _mae(pred[name][:, j], Y[:, j])
        for objective in ("gain", "balanced"):
            entry.update(_choice_scores(groups, name, objective))
        baselines.append(entry)
    predictions = [
        {
            "dataset": row_dataset(r),
            "model": row_model(r),
            "method": row_method(r),
            "shots": row_shots(r),
            "seed": r.get("seed"),
            **{f"measured_{t}": _none(Y[i, j]) for j, t in enumerate(TARGETS)},
            **{f"predicted_{t}": _none(pred["predictor"][i, j]) for j, t in enumerate(TARGETS)},
        }
        for i, r in enumerate(rows)
    ]
    return clean_json({
        "n_runs": len(rows),
        "n_datasets": len(folds),
        "folds": folds_out,
        "targets": targets,
        "baselines": baselines,
        "n_groups": {o: sum(1 for g in groups if g["valid"][o]) for o in ("gain", "balanced")},
        "predictions": predictions,
    })


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python numbers, recursively: valid JSON for storage."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _groups(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (model, dataset, shots): measured and predicted (gain, ood) per method, seeds averaged."""
    keys: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        keys.setdefault((row_model(r), row_dataset(r), row_shots(r)), {}).setdefault(row_method(r), []).append(i)
    out = []
    for key, methods in keys.items():
        g: dict[str, Any] = {"key": key, "measured": {}, "pred": {n: {} for n in pred}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m, idx in methods.items():
                g["measured"][m] = (float(np.nanmean(Y[idx, 0])), float(np.nanmean(Y[idx, 1])))
                for n, P in pred.items():
                    g["pred"][n][m] = (float(np.nanmean(P[idx, 0])), float(np.nanmean(P[idx, 1])))
        g["valid"] = {
            o: sum(1 for v in g["measured"].values() if math.isfinite(_objective_value(*v, o))) >= 2
            for o in ("gain", "balanced")
        }
        out.append(g)
    return out


def _order(methods: Iterable[str]) -> list[str]:
    known = [m for m in KNOWN_METHODS if m in methods]
    return known + sorted(m for m in methods if m not in KNOWN_METHODS)


def _choice_scores(groups: list[dict[str, Any]], name: str, objective: str) -> dict[str, Any]:
    """Top-1 accuracy and mean regret of one recommender over the valid groups."""
    hits, regrets = [], []
    for g in groups:
        if not g["valid"][objective]:
            continue
        measured = {m: _objective_value(*v, objective) for m, v in g["measured"].items()}
        measured = {m: v for m, v in measured.items() if math.isfinite(v)}
        best = max(measured.values())
        cands = _order(measured)
        if name == "random":  # exact expectation over a uniform choice: no seed needed
            hits.append(sum(1 for v in measured.values() if v == best) / len(measured))
            regrets.append(float(np.mean([best - v for v in measured.values()])))
            continue
        if name.startswith("always-"):
            want = name.split("-", 1)[1]
            order = [want] + [m for m in _FALLBACK if m != want] + cands
            choice = next(m for m in order if m in measured)
        else:
            scores = {m: _objective_value(*g["pred"][name].get(m, (math.nan, math.nan)), objective) for m in cands}
            finite = {m: s for m, s in scores.items() if math.isfinite(s)}
            if not finite:
                continue
            choice = max(cands, key=lambda m: finite.get(m, -math.inf))  # ties: known order
        hits.append(1.0 if measured[choice] == best else 0.0)
        regrets.append(best - measured[choice])
    return {
        f"top1_{objective}": float(np.mean(hits)) if hits else None,
        f"regret_{objective}": float(np.mean(regrets)) if regrets else None,
        f"groups_{objective}": len(hits),
    }
