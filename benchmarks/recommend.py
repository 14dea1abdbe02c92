"""How fast ``advisor recommend`` and ``advisor signals --from-embeddings`` answer on a cached
pair, beyond interpreter start.

    python benchmarks/recommend.py                                   # lit-offline x fashion-mnist, default history
    python benchmarks/recommend.py --db registry.db --model lit-offline --dataset digits

"Cached pair": the pair's signals are in the history and a predictor is stored. A warm-up call
makes sure of both (it may compute signals or train the predictor; it is not timed). Then, each
in a fresh Python process:

- ``first call in a fresh process``: ``recommend()`` timed in-process around the call, so the
  lazy imports it triggers (the plugin modules and whatever they import; SQLAlchemy only when
  the history needs more than the sqlite3 read path) are billed but the interpreter start is
  not; then split into loading the plugins and the call after it;
- ``repeat call, same process``: a second ``recommend()`` right after the first (everything
  imported, plugins loaded);
- ``advisor recommend`` as a subprocess: the whole command's wall time, and the same minus the
  time of ``python -c pass`` (the interpreter start);
- ``advisor signals --from-embeddings FILE --json`` as a subprocess, on the pair's real
  embeddings (the default signal sample, 2000 images, written once with
  ``advisor.embeddings_file``): every built-in signal computed, minus the interpreter start.

The three subprocesses run interleaved (pass, recommend, signals) over ``--repeats`` rounds with
the load average recorded each round; the medians are the headline. One extra run of each
command under ``python -X importtime`` lists the imports that cost the most.
Target (issue 14): both commands under 1.5 s beyond interpreter start. Results go to
``benchmarks/results/recommend.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "recommend.json"
TARGET_S = 1.5

_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from advisor.recommendation import recommend
t_import = time.perf_counter() - t0
kw = json.loads(sys.argv[1])
t0 = time.perf_counter()
if kw["split"]:
    from advisor.plugins import load_plugins
    load_plugins()
t_plugins = time.perf_counter() - t0
t0 = time.perf_counter(); rec = recommend(kw["model"], kw["dataset"], db=kw["db"], quiet=True); t1 = time.perf_counter()
rec2 = recommend(kw["model"], kw["dataset"], db=kw["db"], quiet=True); t2 = time.perf_counter()
heavy = sorted(m for m in ("torch", "lightgbm", "sklearn", "scipy", "sqlalchemy", "matplotlib", "open_clip")
               if m in sys.modules)
print(json.dumps({"import_s": t_import, "plugins_s": t_plugins, "first_s": t1 - t0, "repeat_s": t2 - t1,
                  "signals_source": rec.signals_source, "source": rec.source, "winner": rec2.winner,
                  "modules": heavy}))
"""


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"command failed ({' '.join(cmd)}):\n{out.stderr or out.stdout}")
    return wall, out.stdout


def _embeddings_file(model: str, dataset: str) -> str:
    """The pair's default signal sample as an embeddings file (embedded once, then cached)."""
    from advisor.embed import embed
    from advisor.embeddings_file import write
    from advisor.signals import DEFAULT_SIGNAL_IMAGES

    path = Path(tempfile.gettempdir()) / f"advisor-bench-{model}-{dataset}-{DEFAULT_SIGNAL_IMAGES}.npz"
    if not path.is_file():
        write(embed(model, dataset, split="train", max_images=DEFAULT_SIGNAL_IMAGES, device="cpu", quiet=True), path)
    return str(path)


def _top_imports(cmd: list[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """Top-level imports by cumulative time, from one run under ``python -X importtime``."""
    if cmd[0] != sys.executable:
        cmd = [sys.executable, "-c", "import sys; from advisor.cli import cli; sys.exit(cli())"] + cmd[1:]
    out = subprocess.run([sys.executable, "-X", "importtime"] + cmd[1:], capture_output=True, text=True, env=env)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if cumulative.strip().isdigit() and not name[1:].startswith(" "):  # top level: not indented
            rows.append((name.strip(), int(cumulative) / 1000.0))
    return sorted(rows, key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="history (default: the user copy of the shipped registry.db)")
    ap.add_argument("--model", default="lit-offline")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--bytecode", action="store_true",
                    help="time the fresh processes with their bytecode cached (.pyc, in a private pycache "
                         "folder), as an installed package has, even where PYTHONDONTWRITEBYTECODE is set")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "advisor-bench-pycache")
    writes_bytecode = "PYTHONDONTWRITEBYTECODE" not in env or not env["PYTHONDONTWRITEBYTECODE"]

    from advisor.recommendation import recommend

    t0 = time.perf_counter()
    warm = recommend(args.model, args.dataset, db=args.db, quiet=True)
    warm_s = time.perf_counter() - t0
    print(f"warm-up: {warm_s:.2f} s (signals from the {warm.signals_source}, ranking by {warm.source}); "
          f"winner {warm.winner}", file=sys.stderr)

    def probe(split: bool) -> dict:
        arg = json.dumps({"model": args.model, "dataset": args.dataset, "db": args.db, "split": split})
        return json.loads(_run([sys.executable, "-c", _PROBE, arg], env)[1].strip().splitlines()[-1])

    if args.bytecode:  # one untimed round writes the bytecode the timed ones read
        probe(False)
    probes = [probe(False) for _ in range(args.repeats)]
    split = [probe(True) for _ in range(args.repeats)]
    emb_file = _embeddings_file(args.model, args.dataset)
    exe = shutil.which("advisor") or ""
    base = [exe] if exe else [sys.executable, "-c", "import sys; from advisor.cli import cli; sys.exit(cli())"]
    cmd = base + ["recommend", "--model", args.model, "--dataset", args.dataset, "--json"]
    if args.db:
        cmd += ["--db", args.db]
    sig_cmd = base + ["signals", "--from-embeddings", emb_file, "--json"]
    bare, cli, sig, loads = [], [], [], []
    if args.bytecode:
        _run(cmd, env), _run(sig_cmd, env)
    for _ in range(args.repeats):  # interleaved: the three see the same load
        loads.append(round(os.getloadavg()[0], 2))
        bare.append(_run([sys.executable, "-c", "pass"], env)[0])
        cli.append(_run(cmd, env)[0])
        sig.append(_run(sig_cmd, env)[0])
    loads.append(round(os.getloadavg()[0], 2))
    imports = {"recommend": _top_imports(cmd, env), "signals --from-embeddings": _top_imports(sig_cmd, env)}

    med = statistics.median
    rows = [
        ("import advisor.recommendation", med(p["import_s"] for p in probes)),
        ("first call in a fresh process (in-process)", med(p["first_s"] for p in probes)),
        ("  of which: loading the plugins (their imports)", med(p["plugins_s"] for p in split)),
        ("  of which: the call once plugins are loaded", med(p["first_s"] for p in split)),
        ("repeat call, same process (in-process)", med(p["repeat_s"] for p in probes)),
        ("python -c pass (interpreter start)", med(bare)),
        ("advisor recommend --json (subprocess wall)", med(cli)),
        ("advisor recommend minus interpreter start", med(cli) - med(bare)),
        ("advisor signals --from-embeddings (subprocess wall)", med(sig)),
        ("advisor signals --from-embeddings minus interpreter start", med(sig) - med(bare)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{args.model} x {args.dataset}; median of {args.repeats} fresh processes")
    print(f"{'measurement'.ljust(width)}  seconds")
    print(f"{'-' * width}  -------")
    for name, v in rows:
        print(f"{name.ljust(width)}  {v:7.3f}")
    print(f"load average (1 min) at each round: {loads} on {os.cpu_count()} CPUs")
    bytecode = "cached (.pyc)" if writes_bytecode else \
        "not written (PYTHONDONTWRITEBYTECODE set: every process compiles advisor's own modules; see --bytecode)"
    print(f"bytecode: {bytecode}")
    print(f"modules loaded by recommend(): {', '.join(probes[0]['modules'])}")
    for name, top in imports.items():
        print(f"slowest imports of {name} (cumulative ms, python -X importtime): "
              + ", ".join(f"{m} {ms:.0f}" for m, ms in top[:6]))
    print(f"signals from the {probes[0]['signals_source']}; ranking by {probes[0]['source']}")
    for name, v in (("advisor recommend", med(cli) - med(bare)), ("advisor signals --from-embeddings", med(sig) - med(bare))):
        print(f"target < {TARGET_S} s beyond interpreter start, {name}: {'met' if v < TARGET_S else 'NOT met'} ({v:.2f} s)")

    result = {
        "model": args.model,
        "dataset": args.dataset,
        "db": args.db or "default",
        "repeats": args.repeats,
        "measurements_s": {name: round(v, 4) for name, v in rows},
        "raw": {"probes": probes, "probes_plugins_first": split, "python_pass_s": bare, "cli_s": cli,
                "signals_from_embeddings_s": sig},
        "load_average_1min": loads,
        "embeddings_file": emb_file,
        "slowest_imports_ms": {k: v[:15] for k, v in imports.items()},
        "target_s": TARGET_S,
        "signals_source": probes[0]["signals_source"],
        "source": probes[0]["source"],
        "modules_loaded": probes[0]["modules"],
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(), "bytecode_cached": writes_bytecode},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
