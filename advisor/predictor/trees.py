"""LightGBM's text model format, evaluated with numpy (predictions and exact TreeSHAP)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PredictorError

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

