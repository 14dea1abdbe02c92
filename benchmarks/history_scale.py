"""A team's history at scale (issue 25): the shipped registry grown to 10k, 100k and 1M runs, on
SQLite and on a real PostgreSQL server, with every command timed against the shipped registry.

    python benchmarks/history_scale.py                                  # 10k and 100k, both backends
    python benchmarks/history_scale.py --sizes 10000,100000,1000000 --backends postgresql
    python benchmarks/history_scale.py --sizes 10000 --backends sqlite --out /tmp/x.json

Per backend, first the shipped registry itself (its 1,561 runs exported and added to a fresh
history on that backend, its predictor trained there), then one history grown in place to each
size: the shipped runs copied with new run ids and seeds (seed + 1000 x copy) and plausible
variation (accuracy after fine-tuning +- a normal 0.01, clipped to [0, 1]; wall time x a
log-normal factor of sd 0.1), so every copy keeps its model, dataset, signals and
configuration. SYNTHETIC rows: never written to any history but the benchmark's own.

Measured at each size, each command a fresh ``advisor`` process (wall time; peak resident
memory from ``os.wait4`` of that process):

- ``history add``: a JSON-lines file of ``--add-rows`` new runs added to the history as it is
  (rows per second, the file's parsing and validation included); the rest of the growth goes
  through ``History.add_records`` in chunks (in-process, validated rows; also in rows/s);
- ``predictor train``: ``train_predictor(evaluate=False)``, the fit, its history summary and
  the store (``advisor predictor train`` adds a leave-one-dataset-out evaluation of one fit
  per dataset on top; ``--train-cli`` times that command instead);
- ``recommend`` on a cached pair (``--pair``, one of the shipped registry's; one untimed call
  first), median of ``--repeats``;
- ``history list --method X --limit 50``, median of ``--repeats``;
- ``sweep status`` of a sweep of 10,000 jobs registered in the same history.

Ratios are against the shipped registry on the same backend in the same run. PostgreSQL runs
the way the tests start it (``tests/pg.py``: ``initdb`` in a temporary directory, loopback
only, fsync off). Prints a table per backend; writes ``benchmarks/results/history_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "history_scale.json"
TARGETS = {"recommend_ratio": 1.5, "recommend_mb": 500, "add_rows_per_s": 5000, "list_s": 1.0,
           "train_s": 600, "train_mb": 8192, "sweep_status_s": 1.0}
SWEEP_JOBS = 10_000
CHUNK = 20_000


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


class TimedOut(Exception):
    """A timed command ran past its ``timeout`` and was killed."""


def timed(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak resident MB, stdout) of one process (its own ``MAXRSS_KB`` line on
    stderr: ``advisor()`` and ``TRAIN`` print it at exit); exits on failure, raises ``TimedOut``
    past ``timeout`` seconds. The process's CPU seconds (user + system) are kept in ``LAST_CPU``:
    on a loaded machine they say what the command costs when wall time says what it waited."""
    global LAST_CPU
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimedOut(f"{' '.join(cmd[-6:])} ran past {timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"command failed ({' '.join(cmd[-8:])}):\n{err[-2000:] or out[-2000:]}")
    mb = math.nan
    for line in err.splitlines()[::-1]:
        if line.startswith("MAXRSS_KB "):
            mb = int(line.split()[1]) / 1024.0
            break
    return wall, mb, out


LAST_CPU = math.nan


def timed_cpu(cmd: list[str]) -> tuple[float, float, str, float]:
    """``timed`` and the process's CPU seconds."""
    wall, mb, out = timed(cmd)
    return wall, mb, out, LAST_CPU


def advisor(*args: str) -> list[str]:
    """An ``advisor`` command that reports its peak resident memory on stderr at exit."""
    code = ("import atexit, resource, sys\n"
            "atexit.register(lambda: print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr))\n"
            "from advisor.cli import cli\n"
            "sys.exit(cli())")
    return [sys.executable, "-c", code, *args]


TRAIN = ("import atexit, json, resource, sys, time\n"
         "atexit.register(lambda: print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
         "from advisor.history import open_history\n"
         "from advisor.predictor import train_predictor\n"
         "with open_history(sys.argv[1]) as h:\n"
         "    info = train_predictor(h, evaluate=False)\n"
         "print(json.dumps({'n_runs': info['n_runs']}))\n")


def shipped_rows(tmp: Path) -> list[dict[str, Any]]:
    from advisor.history import open_history

    copy = tmp / "registry.db"
    shutil.copy(ROOT / "registry.db", copy)
    with open_history(copy) as h:
        return h.runs()


def synthetic(base: list[dict[str, Any]], first_copy: int, n: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """``n`` SYNTHETIC rows: copies ``first_copy``, ``first_copy + 1``, ... of the shipped rows."""
    made, k = 0, first_copy
    while made < n:
        for r in base:
            if made >= n:
                return
            row = dict(r)
            row["run_id"] = f"{r['run_id']}-x{k}"
            row["seed"] = int(r["seed"]) + 1000 * k
            row["id_acc_after"] = min(1.0, max(0.0, float(r["id_acc_after"]) + rng.gauss(0.0, 0.01)))
            if r.get("wall_time_s") is not None:
                row["wall_time_s"] = float(r["wall_time_s"]) * math.exp(rng.gauss(0.0, 0.1))
            made += 1
            yield row
        k += 1


def add_in_process(url: str, rows: Iterator[dict[str, Any]], surrogates: bool = True) -> tuple[int, float]:
    """Validated ``add_records`` in chunks of ``CHUNK``; (rows added, seconds).
    ``surrogates=False``: the rows are known to hold no lone surrogate (``may_hold_surrogates``)."""
    from advisor.history import open_history
    from advisor.history.validate import parse_row

    added, spent = 0, 0.0
    with open_history(url) as h:
        chunk: list[Any] = []

        def flush() -> None:
            nonlocal added, spent, chunk
            t0 = time.perf_counter()
            added += h.add_records(chunk)
            spent += time.perf_counter() - t0
            chunk = []

        for i, row in enumerate(rows):
            chunk.append(parse_row(row, False, f"row {i + 1}", surrogates))
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    return added, spent


def register_sweep(url: str, rows: list[dict[str, Any]]) -> str:
    from advisor.history import open_history
    from advisor.history.sweeps import register_sweep as register

    jobs = []
    for i in range(SWEEP_JOBS):
        r = rows[i % len(rows)]
        config = {"model": r["model"], "dataset": r["dataset"], "method": r["method"], "shots": r["shots"],
                  "seed": 10_000_000 + i, "hparams": r.get("hparams") or {}}
        jobs.append((f"job-{i:05d}", f"{r['model']}|{r['dataset']}", i % 3, config))
    with open_history(url) as h:
        register(h, "bench-sweep-10k", {"name": "bench-10k"}, "local", jobs, 300.0, recorded={})
    return "bench-sweep-10k"


def measure(url: str, pair: tuple[str, str], repeats: int, add_file: Path | None, train_cli: bool,
            sweep_id: str, train_timeout: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"load": [_load()]}
    if add_file is not None:
        n_add = sum(1 for _ in open(add_file, encoding="utf-8"))
        wall, mb, _ = timed(advisor("history", "add", str(add_file), "--db", url))
        out.update(add_s=wall, add_rows=n_add, add_rows_per_s=n_add / wall, add_mb=mb, add_cpu_s=LAST_CPU,
                   add_rows_per_cpu_s=n_add / LAST_CPU)
    out["load"].append(_load())
    cmd = advisor("predictor", "train", "--db", url) if train_cli else [sys.executable, "-c", TRAIN, url]
    try:
        wall, mb, _ = timed(cmd, timeout=train_timeout)
        out.update(train_s=wall, train_mb=mb, train_cpu_s=LAST_CPU)
    except TimedOut as exc:  # the stored predictor stays the previous size's: recommend still answers
        print(f"predictor train: {exc}; not measured at this size", file=sys.stderr)
        out.update(train_s=math.nan, train_mb=math.nan, train_cpu_s=math.nan, train_timed_out_s=train_timeout)
    out["load"].append(_load())
    rec = advisor("recommend", "--model", pair[0], "--dataset", pair[1], "--db", url, "--json")
    timed(rec)  # warm: the dataset's descriptors cached
    runs = [timed_cpu(rec) for _ in range(repeats)]
    answer = json.loads(runs[-1][2])
    out.update(recommend_s=statistics.median(r[0] for r in runs), recommend_mb=max(r[1] for r in runs),
               recommend_cpu_s=statistics.median(r[3] for r in runs),
               recommend_winner=answer.get("winner"), recommend_notes=answer.get("notes"))
    out["load"].append(_load())
    method = answer["methods"][0]["method"] if answer.get("methods") else "lora"
    lst = [timed_cpu(advisor("history", "list", "--method", method, "--limit", "50", "--db", url))
           for _ in range(repeats)]
    out.update(list_method=method, list_s=statistics.median(r[0] for r in lst), list_mb=max(r[1] for r in lst),
               list_cpu_s=statistics.median(r[3] for r in lst))
    st = [timed_cpu(advisor("sweep", "status", sweep_id, "--db", url)) for _ in range(repeats)]
    out.update(sweep_status_s=statistics.median(r[0] for r in st), sweep_status_mb=max(r[1] for r in st),
               sweep_status_cpu_s=statistics.median(r[3] for r in st))
    out["load"].append(_load())
    return out


def count(url: str) -> int:
    from advisor.history import open_history

    with open_history(url) as h:
        return h.count()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated run counts (grown in place)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pair", default="lit-offline,fashion-mnist", help="MODEL,DATASET of the shipped registry")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--add-rows", type=int, default=10_000, help="rows of the timed `history add` file")
    ap.add_argument("--train-cli", action="store_true",
                    help="time `advisor predictor train` (with its leave-one-dataset-out evaluation)")
    ap.add_argument("--train-timeout", type=float, default=None, metavar="S",
                    help="stop a `predictor train` running past S seconds and record it as not measured")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pair = tuple(args.pair.split(",", 1))
    assert len(pair) == 2
    from advisor.history.io import write_rows
    from advisor.history.validate import may_hold_surrogates

    tmp = Path(tempfile.mkdtemp(prefix="advisor-scale-"))
    base = shipped_rows(tmp)
    surrogates = may_hold_surrogates(json.dumps(base, ensure_ascii=False))  # copies hold the same text
    rng = random.Random(0)
    results: dict[str, Any] = {"sizes": sizes, "shipped_runs": len(base), "pair": list(pair), "targets": TARGETS,
                               "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                               "machine": platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "command": " ".join(["python", "benchmarks/history_scale.py", *(argv or sys.argv[1:])]),
                               "train": "predictor train (CLI, with evaluation)"
                               if args.train_cli else "train_predictor(evaluate=False)", "backends": {}}
    server = None
    try:
        for backend in [b for b in args.backends.split(",") if b]:
            if backend == "sqlite":
                url = str(tmp / "scale.db")
            else:
                sys.path.insert(0, str(ROOT / "tests"))
                from pg import PostgresServer

                server = server or PostgresServer()
                url = server.new_database()
            print(f"[{backend}] shipped registry: {len(base)} runs", file=sys.stderr)
            t0 = time.perf_counter()
            add_in_process(url, iter(base), surrogates)
            sweep_id = register_sweep(url, base)
            print(f"[{backend}] loaded in {time.perf_counter() - t0:.1f} s; measuring", file=sys.stderr)
            rows = [{"size": "shipped", "runs": count(url), **measure(url, pair, args.repeats, None, args.train_cli,
                                                                      sweep_id, args.train_timeout)}]
            copy = 1
            for size in sizes:
                have = count(url)
                grow = size - have - args.add_rows
                if grow > 0:
                    t0 = time.perf_counter()
                    n, spent = add_in_process(url, synthetic(base, copy, grow, rng), surrogates)
                    copy += math.ceil(grow / len(base))
                    print(f"[{backend}] grew to {have + n} runs in {time.perf_counter() - t0:.0f} s "
                          f"(add_records {n / spent:.0f} rows/s)", file=sys.stderr)
                    in_process = n / spent
                else:
                    in_process = math.nan
                add_file = tmp / "add.jsonl"
                extra = list(synthetic(base, copy, min(args.add_rows, max(size - count(url), 0)), rng))
                copy += math.ceil(len(extra) / len(base))
                with open(add_file, "w", encoding="utf-8") as f:
                    write_rows(extra, "jsonl", f)
                print(f"[{backend}] measuring at {size} runs", file=sys.stderr)
                m = measure(url, pair, args.repeats, add_file if extra else None, args.train_cli, sweep_id,
                            args.train_timeout)
                rows.append({"size": size, "runs": count(url), "add_records_rows_per_s": in_process, **m})
                results["backends"][backend] = rows
                report(backend, rows)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=2, default=str))
            results["backends"][backend] = rows
            if len(rows) == 1:
                report(backend, rows)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def report(backend: str, rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print(f"\n{backend}: ratios against the shipped registry ({base['runs']} runs) on the same backend, same run")
    head = (f"{'runs':>9} {'add rows/s':>10} {'records/s':>9} {'train s':>8} {'train MB':>8} {'recommend s':>11} "
            f"{'x shipped':>9} {'rec MB':>7} {'list s':>7} {'x':>5} {'status s':>8} {'x':>5}  load")
    print(head)
    for r in rows:
        print(f"{r['runs']:>9} {_f(r.get('add_rows_per_s'), '.0f'):>10} {_f(r.get('add_records_rows_per_s'), '.0f'):>9} "
              f"{_f(r['train_s'], '.1f'):>8} {_f(r['train_mb'], '.0f'):>8} {r['recommend_s']:>11.2f} "
              f"{r['recommend_s'] / base['recommend_s']:>9.2f} {r['recommend_mb']:>7.0f} {r['list_s']:>7.2f} "
              f"{r['list_s'] / base['list_s']:>5.2f} {r['sweep_status_s']:>8.2f} "
              f"{r['sweep_status_s'] / base['sweep_status_s']:>5.2f}  {min(r['load']):.1f}-{max(r['load']):.1f}")
    print("CPU seconds of the same processes (user + system; median of the repeats), what they cost without the load:")
    print(f"{'runs':>9} {'add cpu s':>9} {'rows/cpu s':>10} {'train cpu s':>11} {'recommend':>9} {'list':>6} {'status':>6}")
    for r in rows:
        print(f"{r['runs']:>9} {_f(r.get('add_cpu_s'), '.2f'):>9} {_f(r.get('add_rows_per_cpu_s'), '.0f'):>10} "
              f"{_f(r.get('train_cpu_s'), '.1f'):>11} {_f(r.get('recommend_cpu_s'), '.2f'):>9} "
              f"{_f(r.get('list_cpu_s'), '.2f'):>6} {_f(r.get('sweep_status_cpu_s'), '.2f'):>6}")
    last = rows[-1]
    if len(rows) > 1:
        t = TARGETS
        train = ("not measured" if math.isnan(last["train_s"]) else
                 "met" if last["train_s"] < t["train_s"] and last["train_mb"] < t["train_mb"] else "NOT met")
        checks = [
            ("recommend within 1.5x of shipped", last["recommend_s"] / base["recommend_s"] <= t["recommend_ratio"]),
            ("recommend under 500 MB", last["recommend_mb"] < t["recommend_mb"]),
            ("history add >= 5,000 rows/s", (last.get("add_rows_per_s") or 0) >= t["add_rows_per_s"]),
            ("history list --limit 50 under 1 s", last["list_s"] < t["list_s"]),
            ("train under 10 min and 8 GB", train),
            ("sweep status (10k jobs) under 1 s", last["sweep_status_s"] < t["sweep_status_s"]),
        ]
        print(f"targets at {last['runs']} runs: " + "; ".join(
            f"{w}: {ok if isinstance(ok, str) else 'met' if ok else 'NOT met'}" for w, ok in checks))


if __name__ == "__main__":
    sys.exit(main())
