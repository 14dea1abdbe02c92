"""Regenerate the README's results section from a history, so its tables are printed, not typed.

    python scripts/readme_results.py --db registry.db            # print the sections
    python scripts/readme_results.py --db registry.db --write    # replace them in README.md

Three kinds of block, each between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``
markers in the README:
- ``measured``: per method x shots x learning rate, mean ID gain and OOD change with the
  seed-to-seed spread (the noise floor), from the runs themselves;
- ``evaluate-source`` / ``evaluate-tower``: what ``advisor predictor evaluate --holdout source``
  and ``--holdout tower`` print on the history (the command's own text rendering of its
  ``--json`` document, so each evaluation runs once);
- ``verdict-source`` / ``verdict-tower``: one line per score on which a baseline is at least as
  good as the predictor, computed from the same command's ``--json`` output (so the README
  says where the predictor does not win without anyone having to read the tables for it);
- ``evaluate-headroom`` / ``verdict-headroom``: the same for ``--holdout headroom`` (trained on
  the pairs with the least headroom, tested on the top fifth);
- ``config-choice-HOLDOUT`` / ``model-choice-HOLDOUT``: the configuration-choice and
  model-choice tables of the same evaluation, per hold-out (a (method, configuration)
  per held-out (model, dataset, shots) group beside the constant rules; a model per (dataset,
  shots) group with several models), rendered from its ``--json`` document;
- ``ablation-source``: ``advisor predictor evaluate --holdout source --ablate`` (every feature,
  without the seed papers' signals, without the anchors, the anchors alone);
- ``claims``: the seed papers' claims tested on the history (``advisor.predictor.claims``);
- ``probe-source``: ``advisor predictor evaluate --holdout source --probe 1,2,5``, the predictor
  without and with the probe features, both trained on every run of the training folds (as
  ``recommend --probe`` uses them) and scored on the held-out runs that recorded a learning
  curve, with whether each one's configuration regret is below every constant rule and the
  rules' table (the command's own text): the history
  merged with the third-edition sweep's runs so far (``--curves-db``, default
  ``sweeps/registry-v3.db``; its runs are added with ``history add --skip-existing`` to a
  temporary copy, so the shipped history is not touched).
The prose around the blocks (what the numbers mean, what the history would need) is written
by hand after reading them.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from advisor.cli.predictor import ablation_text, config_choice_text, evaluation_text, model_choice_text
from advisor.history import open_history
from advisor.plugins import sort_methods
from advisor.predictor import row_targets

HOLDOUTS = ("source", "tower", "headroom")
#: The hold-outs whose configuration-choice and model-choice tables get their own blocks.
CHOICE_HOLDOUTS = HOLDOUTS
# (score key in the JSON baselines, label, True when higher is better)
SCORES = (
    ("id_gain_spearman", "ID-gain Spearman", True),
    ("id_gain_mae", "ID-gain MAE", False),
    ("ood_change_spearman", "OOD-change Spearman", True),
    ("ood_change_mae", "OOD-change MAE", False),
    ("cost_spearman", "cost Spearman", True),
    ("cost_mae", "cost MAE", False),
    ("top1_gain", "top-1 (gain)", True),
    ("regret_gain", "regret (gain)", False),
    ("top1_balanced", "top-1 (balanced)", True),
    ("regret_balanced", "regret (balanced)", False),
)


def _read_only(db: str) -> str:
    # Opening the shipped file read-write would switch it to WAL mode: read it as a URI.
    return db if "://" in db else f"sqlite:///file:{db}?mode=ro&uri=true"


def _config_key(r: Mapping[str, Any]) -> tuple:
    hp = json.dumps(r.get("hparams") or {}, sort_keys=True, default=str)
    return (r["model"], r.get("pretrained"), r["dataset"], r["method"], r["shots"], hp)


def measured_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one line per (method, shots, lr); seed spread = mean over configurations run
    with two or more seeds of the standard deviation across their seeds."""
    # Each row's targets once; a configuration is keyed under its (method, shots, lr) line.
    groups: dict[tuple, list[tuple[float, float, float]]] = collections.defaultdict(list)
    by_config: dict[tuple, list[tuple[float, float]]] = collections.defaultdict(list)
    for r in rows:
        t = row_targets(r)
        line = (r["method"], int(r["shots"]), (r.get("hparams") or {}).get("lr"))
        groups[line].append((t["id_gain"], t["ood_change"], float(r["wall_time_s"])))
        by_config[(line, _config_key(r))].append((t["id_gain"], t["ood_change"]))
    spread: dict[tuple, list[tuple[float, float]]] = collections.defaultdict(list)
    for (line, _), vals in by_config.items():
        if len(vals) >= 2:
            spread[line].append(tuple(np.asarray(vals, dtype=float).std(axis=0, ddof=1)))
    order = sort_methods({m for m, _, _ in groups})
    lines = ["| method | shots | lr | runs | configs with 2+ seeds | mean ID gain | ID seed spread | mean OOD change "
             "| OOD seed spread | worst OOD change | median wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (m, k, lr), rs in sorted(groups.items(), key=lambda g: (order.index(g[0][0]) if g[0][0] in order else 99,
                                                               g[0][1], float(g[0][2] or 0))):
        t = np.asarray(rs, dtype=float)
        wall = np.median(t[:, 2])
        s = spread.get((m, k, lr))
        sd_id, sd_ood = (f"{np.mean([x[0] for x in s]):.3f}", f"{np.mean([x[1] for x in s]):.3f}") if s else ("n/a", "n/a")
        repeated = len(s) if s else 0
        lines.append(f"| {m} | {k} | {lr if lr is not None else '-'} | {len(rs)} | {repeated} | {t[:, 0].mean():+.3f} "
                     f"| {sd_id} | {t[:, 1].mean():+.3f} | {sd_ood} | {t[:, 1].min():+.3f} | {wall:.1f} |")
    models = sorted({r["model"] for r in rows})
    datasets = sorted({r["dataset"] for r in rows})
    sources = sorted({(r.get("dataset.extra") or {}).get("source") or r["dataset"] for r in rows})
    towers = sorted({(r.get("model.extra") or {}).get("image_tower") or r.get("model.family") or r["model"] for r in rows})
    plural = "s" if len(towers) != 1 else ""
    head = (f"{len(rows)} runs: {len(models)} models over {len(towers)} image tower{plural} ({', '.join(towers)}), "
            f"{len(datasets)} tasks from {len(sources)} sources ({', '.join(sources)}), "
            f"{len({r['method'] for r in rows})} methods.")
    return head + "\n\n" + "\n".join(lines)


def _advisor(*args: str) -> str:
    """What the installed ``advisor`` command prints (the same command a reader would run)."""
    exe = Path(sys.executable).with_name("advisor")
    out = subprocess.run([str(exe) if exe.exists() else "advisor", *args], capture_output=True, text=True)
    if out.returncode != 0:  # e.g. one tower only: the README shows the command's refusal
        raise Refused(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return out.stdout.rstrip("\n")


class Refused(Exception):
    """The command exited non-zero; its last stderr line is the message."""


def verdict(ev: Mapping[str, Any]) -> str:
    """One line per score where some baseline matches or beats the predictor (random excluded:
    it is there for scale), or a line saying the predictor is ahead everywhere."""
    baselines = {b["name"]: b for b in ev.get("baselines") or []}
    mine = baselines.get("predictor") or {}
    lines = []
    for key, label, higher in SCORES:
        p = mine.get(key)
        if p is None:
            continue
        as_good = [(name, b[key]) for name, b in baselines.items()
                   if name not in ("predictor", "random") and b.get(key) is not None
                   and (b[key] >= p if higher else b[key] <= p)]
        if as_good:
            who = ", ".join(f"{name} {v:.3g}" for name, v in as_good)
            lines.append(f"- {label}: predictor {p:.3g}; not beaten by it: {who}")
    if not lines:
        return "- The predictor beats every baseline on every score above."
    return "\n".join(lines)


def probe_block(db: str, curves_db: str | None) -> str:
    """``predictor evaluate --probe 1,2,5`` on ``db`` merged with the runs of ``curves_db``."""
    import tempfile

    from advisor.history import create_registry

    if not curves_db or not Path(curves_db).exists():
        return "- Not evaluated: no history with learning curves was given."
    with tempfile.TemporaryDirectory() as tmp:
        merged, runs = str(Path(tmp) / "merged.db"), str(Path(tmp) / "curves.jsonl")
        create_registry(merged, db)
        _advisor("history", "export", "--db", _read_only(curves_db), "-o", runs, "--json")
        added = json.loads(_advisor("history", "add", runs, "--db", merged, "--skip-existing", "--json"))
        try:
            text = _advisor("predictor", "evaluate", "--db", merged, "--holdout", "source", "--probe", "1,2,5")
        except Refused as exc:
            return f"```\n$ advisor predictor evaluate --holdout source --probe 1,2,5\n{exc}\n```"
    head = (f"The shipped history plus {added['added']} runs of `{curves_db}` (the third-edition sweep so far; "
            f"{added['skipped']} already in it):")
    return head + "\n\n```\n" + text + "\n```"


def sections(db: str, curves_db: str | None = None) -> dict[str, str]:
    rows = open_history(_read_only(db)).runs()
    out = {"measured": measured_table(rows)}
    for holdout in HOLDOUTS:
        try:
            # One evaluation per hold-out: the text is the command's own rendering of its JSON
            # (``evaluation_text``, what it prints without --json), so it is not run twice.
            ev = json.loads(_advisor("predictor", "evaluate", "--db", db, "--holdout", holdout, "--json"))
        except Refused as exc:
            out[f"evaluate-{holdout}"] = f"```\n$ advisor predictor evaluate --holdout {holdout}\n{exc}\n```"
            out[f"verdict-{holdout}"] = "- Not evaluated on this history (see above)."
            if holdout in CHOICE_HOLDOUTS:
                for kind in ("config-choice", "model-choice"):
                    out[f"{kind}-{holdout}"] = out[f"evaluate-{holdout}"]
            continue
        # The choice tables go to blocks of their own (for CHOICE_HOLDOUTS), not into this one.
        out[f"evaluate-{holdout}"] = "```\n" + evaluation_text(ev, choices=False) + "\n```"
        out[f"verdict-{holdout}"] = verdict(ev)
        if holdout in CHOICE_HOLDOUTS:
            out[f"config-choice-{holdout}"] = _code(config_choice_text(ev))
            out[f"model-choice-{holdout}"] = _code(model_choice_text(ev))
    try:
        ab = json.loads(_advisor("predictor", "evaluate", "--db", db, "--holdout", "source", "--ablate", "--json"))
        out["ablation-source"] = "```\n" + ablation_text(ab) + "\n```"
    except Refused as exc:
        out["ablation-source"] = f"```\n$ advisor predictor evaluate --holdout source --ablate\n{exc}\n```"
    out["claims"] = claims_block(db)
    out["probe-source"] = probe_block(db, curves_db)
    return out


def _code(text: str) -> str:
    return "```\n" + text + "\n```" if text else "- Not evaluated on this history."


def claims_block(db: str) -> str:
    """The seed papers' claims on the history, each with its bootstrap interval."""
    from advisor.plugins import list_tuners
    from advisor.predictor.claims import claims, claims_table

    rows = open_history(_read_only(db)).training_rows()
    return claims_table(claims(rows, {t.name: t.family for t in list_tuners()}))


BLOCKS = ("measured", *(f"{kind}-{h}" for h in HOLDOUTS for kind in ("evaluate", "verdict")),
          *(f"{kind}-{h}" for h in CHOICE_HOLDOUTS for kind in ("config-choice", "model-choice")), "ablation-source", "claims",
          "probe-source")


def _block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- results:{re.escape(name)}:begin -->).*?(<!-- results:{re.escape(name)}:end -->)", re.S)


def check_markers(readme: str) -> None:
    """Refuse before any work when the README and this script disagree on what is generated."""
    missing = [name for name in BLOCKS if not _block_pattern(name).search(readme)]
    if missing:
        raise SystemExit(f"README has no <!-- results:NAME:begin/end --> markers for: {', '.join(missing)}")


def replace_blocks(readme: str, blocks: Mapping[str, str]) -> str:
    """The README with each marked block's body replaced."""
    check_markers(readme)
    for name, body in blocks.items():
        readme = _block_pattern(name).sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(2), readme)
    return readme


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="registry.db")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--write", action="store_true", help="replace the marked blocks in the README")
    ap.add_argument("--curves-db", default="sweeps/registry-v3.db",
                    help="runs with learning curves to add (in a temporary copy) for the probe block")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not Path(args.db).exists() and "://" not in args.db:
        raise SystemExit(f"no history at {args.db}")
    path = Path(args.readme)
    if args.write:
        check_markers(path.read_text())
    blocks = sections(args.db, args.curves_db)
    if args.write:
        path.write_text(replace_blocks(path.read_text(), blocks))
        print(f"updated {', '.join(blocks)} in {path}", file=sys.stderr)
    else:
        for name, body in blocks.items():
            print(f"<!-- {name} -->\n{body}\n")


if __name__ == "__main__":
    main()
