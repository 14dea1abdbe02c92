"""A sweep grid: the runs ``advisor sweep`` plans, from command-line axes or a TOML sweep file.

A grid is one or more *blocks*; each block is a cross product of models x datasets x methods x
shots x seeds x hyper-parameter axes, plus fixed per-method hyper-parameters (CPU schedules)
and run options (test-sample sizes, device). The grid is the union of its blocks' runs, so a
sweep file can cover every model x task x method at 16 shots and other shot counts or extra
seeds on planned subsets. Every run becomes a ``JobConfig`` with a stable key: the same grid
expanded twice gives the same keys in the same order, which is what makes a sweep resumable.

Sweep file (``tomllib``)::

    name = "my-sweep"
    [run]                     # options of every run (advisor run's)
    max_images = 500          # ID test images per run (fixed sample)
    max_ood = 500             # images per OOD reference set
    ood = ["faces"]           # OOD reference sets (default: one per other offline source)
    [[block]]
    models = ["lit-offline"]
    datasets = ["mnist-5k", "digits"]
    methods = ["lora", "coop"]
    shots = [4, 16]
    seeds = [0, 1]
    hparams = { lr = [1e-4, 1e-3] }          # axes: one run per value (cross product)
    [block.method_hparams.lora]              # fixed values for one method
    epochs = 20
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import AdvisorError
from ..specs import DatasetSpec, ModelSpec, RunRequest, stable_hash


class SweepSpecError(AdvisorError):
    """A sweep grid or sweep file that cannot be expanded."""


BLOCK_KEYS = {"models", "datasets", "methods", "shots", "seeds", "hparams", "method_hparams", "pretrained",
              "image_size"}


@dataclass(frozen=True)
class JobConfig:
    """One planned run. ``hparams`` are the sweep's overrides (the tuner fills in the rest)."""

    model: str
    dataset: str
    method: str
    shots: int | None
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    image_size: int | None = None
    run: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "pretrained": self.pretrained, "image_size": self.image_size,
                "dataset": self.dataset, "method": self.method, "shots": self.shots, "seed": self.seed,
                "hparams": dict(self.hparams), "run": dict(self.run)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JobConfig":
        return cls(model=d["model"], dataset=d["dataset"], method=d["method"], shots=d.get("shots"),
                   seed=int(d.get("seed", 0)), hparams=dict(d.get("hparams") or {}),
                   pretrained=d.get("pretrained"), image_size=d.get("image_size"), run=dict(d.get("run") or {}))

    @property
    def key(self) -> str:
        """Stable identity of the run within any sweep (what a retry or a duplicate shares)."""
        return stable_hash(self.to_dict(), 24)

    @property
    def pair(self) -> str:
        """The (model, dataset) pair: a worker keeps it loaded for the next job of the same pair."""
        return f"{self.model}|{self.pretrained or ''}|{self.image_size or ''}|{self.dataset}"

    def request(self, **where: Any) -> RunRequest:
        """This job as a ``RunRequest`` (its pair, method, shots, seed, overrides and the sweep's
        run options); ``where``: the request's other fields (db, spool_dir, record ...)."""
        request = RunRequest(ModelSpec(self.model, self.pretrained, self.image_size), DatasetSpec(self.dataset),
                             self.method, shots=self.shots, seed=self.seed, hparams=dict(self.hparams), **where)
        return request.with_sweep_options(self.run)

    def label(self) -> str:
        hp = " ".join(f"{k}={v}" for k, v in sorted(self.hparams.items()))
        return f"{self.model} {self.dataset} {self.method} shots={self.shots} seed={self.seed} {hp}".strip()


@dataclass
class SweepGrid:
    """Blocks of axes plus the run options shared by every job."""

    blocks: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    def jobs(self) -> list[JobConfig]:
        """Every planned run, deduplicated, in a stable order (blocks, then axes)."""
        return [job for _, job in self.staged_jobs()]

    def staged_jobs(self) -> list[tuple[int, JobConfig]]:
        """(block index, job): workers finish an earlier block before starting a later one, so
        an interrupted sweep has covered its first blocks whole (put the core grid first)."""
        seen: set[str] = set()
        out: list[tuple[int, JobConfig]] = []
        for stage, block in enumerate(self.blocks):
            for job in _expand_block(block, self.run):
                if job.key not in seen:
                    seen.add(job.key)
                    out.append((stage, job))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run": dict(self.run), "blocks": [dict(b) for b in self.blocks]}

    @property
    def sweep_id(self) -> str:
        """The same grid (by its expanded runs) always has the same id: starting it again resumes it."""
        return "sw-" + stable_hash(sorted(j.key for j in self.jobs()), 12)


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise SweepSpecError(f"sweep axis {what!r} is empty")
    return items


def _check_number(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepSpecError(f"hyper-parameter {key}={value!r} is not a finite number")


def _expand_block(block: Mapping[str, Any], run: Mapping[str, Any]) -> Iterable[JobConfig]:
    unknown = set(block) - BLOCK_KEYS
    if unknown:
        raise SweepSpecError(f"unknown key(s) in a sweep block: {', '.join(sorted(unknown))} "
                             f"(expected: {', '.join(sorted(BLOCK_KEYS))})")
    for needed in ("models", "datasets", "methods"):
        if needed not in block:
            raise SweepSpecError(f"a sweep block has no {needed!r}")
    models = [str(m) for m in _as_list(block["models"], "models")]
    datasets = [str(d) for d in _as_list(block["datasets"], "datasets")]
    methods = [str(m) for m in _as_list(block["methods"], "methods")]
    shots = [_shots(s) for s in _as_list(block.get("shots", [16]), "shots")]
    seeds = [_int(s, "seeds") for s in _as_list(block.get("seeds", [0]), "seeds")]
    axes = block.get("hparams") or {}
    if not isinstance(axes, Mapping):
        raise SweepSpecError("'hparams' must map a hyper-parameter to a list of values")
    axis_names = sorted(axes)
    axis_values = [_as_list(axes[k], f"hparams.{k}") for k in axis_names]
    for k, values in zip(axis_names, axis_values):
        for v in values:
            _check_number(k, v)
    per_method = block.get("method_hparams") or {}
    if not isinstance(per_method, Mapping) or not all(isinstance(v, Mapping) for v in per_method.values()):
        raise SweepSpecError("'method_hparams' must be a table of tables: method -> {key = value}")
    stray = set(per_method) - set(methods)
    if stray:
        raise SweepSpecError(f"method_hparams names method(s) not in the block: {', '.join(sorted(stray))}")
    pretrained = block.get("pretrained")
    image_size = block.get("image_size")
    if image_size is not None:
        image_size = _int(image_size, "image_size")
        if image_size < 1:
            raise SweepSpecError(f"image_size must be a positive number of pixels (got {image_size})")
    for model, dataset, method, k, seed, combo in itertools.product(
        models, datasets, methods, shots, seeds, itertools.product(*axis_values) if axis_names else [()]
    ):
        hp: dict[str, Any] = {}
        for key, value in dict(per_method.get(method, {})).items():
            _check_number(key, value)
            hp[key] = value
        hp.update(zip(axis_names, combo))
        yield JobConfig(model=model, dataset=dataset, method=method, shots=k, seed=seed, hparams=hp,
                        pretrained=pretrained, image_size=image_size, run=dict(run))


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SweepSpecError(f"{what}: {value!r} is not a whole number")
    try:
        return int(value)
    except ValueError:
        raise SweepSpecError(f"{what}: {value!r} is not a whole number") from None


def _shots(value: Any) -> int | None:
    if isinstance(value, str) and value.lower() in ("all", "none", "full"):
        return None
    k = _int(value, "shots")
    if k < 1:
        raise SweepSpecError(f"shots must be at least 1 (got {k})")
    return k


def check_sweep_options(run: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep's ``[run]`` options, each one ``RunRequest.SWEEP_OPTIONS`` declares, with its type."""
    known = RunRequest.SWEEP_OPTIONS
    out: dict[str, Any] = {}
    for key, value in run.items():
        if key not in known:
            raise SweepSpecError(f"unknown run option {key!r} in the sweep (known: {', '.join(sorted(known))})")
        typ = known[key][0]
        if typ is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SweepSpecError(f"run option {key} must be a positive whole number (got {value!r})")
        if typ is bool and not isinstance(value, bool):
            raise SweepSpecError(f"run option {key} must be true or false (got {value!r})")
        if typ is str and not isinstance(value, str):
            raise SweepSpecError(f"run option {key} must be a string (got {value!r})")
        if typ is list and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
            raise SweepSpecError(f"run option {key} must be a list of dataset names (got {value!r})")
        out[key] = value
    return out


def load_sweep_file(path: str | Path) -> SweepGrid:
    """Read a TOML sweep file (see the module docstring)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepSpecError(f"sweep file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepSpecError(f"cannot read sweep file {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepSpecError(f"sweep file {p} is not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "run", "block"}
    if unknown:
        raise SweepSpecError(f"sweep file {p}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                             "(expected name, [run], [[block]])")
    blocks = data.get("block")
    if not isinstance(blocks, list) or not blocks:
        raise SweepSpecError(f"sweep file {p} has no [[block]] table")
    grid = SweepGrid(blocks=[dict(b) for b in blocks], run=check_sweep_options(data.get("run") or {}),
                     name=data.get("name"))
    grid.jobs()  # validate every block now, before anything is submitted
    return grid


def parse_hparam_axes(items: Sequence[str]) -> dict[str, list[Any]]:
    """``KEY=V1,V2`` strings -> {key: [values]}, values parsed as TOML scalars (1e-4, 10, true, "x")."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise SweepSpecError(f"--hparam {item!r}: expected KEY=V1,V2,...")
        values = [_scalar(v.strip(), key) for v in raw.split(",")]
        axes.setdefault(key, [])
        axes[key].extend(values)
    return axes


def _scalar(text: str, key: str) -> Any:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepSpecError(f"--hparam {key}={text}: not a finite number")
    if isinstance(value, (dict, list)):
        raise SweepSpecError(f"--hparam {key}={text}: expected a number, true/false or a word")
    return value


def grid_from_options(models: Sequence[str], datasets: Sequence[str], methods: Sequence[str],
                      shots: Sequence[str], seeds: Sequence[int], hparams: Sequence[str],
                      pretrained: str | None = None, image_size: int | None = None,
                      run: Mapping[str, Any] | None = None) -> SweepGrid:
    block: dict[str, Any] = {"models": list(models), "datasets": list(datasets), "methods": list(methods),
                             "shots": list(shots) or [16], "seeds": list(seeds) or [0]}
    axes = parse_hparam_axes(hparams)
    if axes:
        block["hparams"] = axes
    if pretrained:
        block["pretrained"] = pretrained
    if image_size is not None:
        block["image_size"] = image_size
    grid = SweepGrid(blocks=[block], run=check_sweep_options(dict(run or {})))
    grid.jobs()
    return grid


def split_list(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated option values -> one flat list (``--models a,b --models c``)."""
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out
