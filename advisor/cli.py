"""The ``advisor`` command line: one click group, sub-groups per concern.

User-caused problems raise ``AdvisorError``; ``AdvisorGroup`` turns them into a one-line
``Error: ...`` and exit code 1, without a traceback. Commands import heavy modules (torch,
open_clip, lightgbm) inside their bodies so ``advisor --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from . import __version__
from .errors import AdvisorError

os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("ADVISOR_ONLINE") is None else None


class AdvisorGroup(click.Group):
    """A click group that reports AdvisorError (and a few OS errors) as one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdvisorError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def db_option(f: Any) -> Any:
    """``--db PATH_OR_URL`` (env ``ADVISOR_DB``): the history database."""
    return click.option(
        "--db",
        "db",
        envvar="ADVISOR_DB",
        default=None,
        metavar="PATH_OR_URL",
        help="History database: a SQLite path or any SQLAlchemy URL (env ADVISOR_DB). "
        "Default: a user-data copy of the shipped registry.db.",
    )(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def model_options(f: Any) -> Any:
    """Options that pick a model: ``--model``, ``--pretrained``, ``--image-size``, ``--cache-dir``."""
    f = click.option("--cache-dir", default=None, help="Where open_clip / Hugging Face weights are cached.")(f)
    f = click.option("--image-size", type=int, default=None, help="Working resolution in pixels (default: the model's).")(f)
    f = click.option("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path.")(f)
    f = click.option("--model", "model", default="lit-offline", show_default=True, envvar="ADVISOR_MODEL",
                     help="Model name: lit-offline, an open_clip architecture, hf-hub:ORG/REPO, or a checkpoint.")(f)
    return f


def dataset_options(f: Any) -> Any:
    """Options that pick a dataset and a split: ``--dataset``, ``--shots``, ``--seed``, ``--max-images``."""
    f = click.option("--max-images", type=int, default=None, help="Cap on images embedded (seeded sample).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and sampling.")(f)
    f = click.option("--shots", type=int, default=None, help="Few-shot: K training images per class.")(f)
    f = click.option("--dataset", "dataset", default="fashion-mnist", show_default=True, envvar="ADVISOR_DATASET",
                     help="Dataset: a registered name, folder:PATH, csv:PATH, or torchvision:NAME.")(f)
    return f


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """A plain aligned text table (no extra dependency)."""
    if not rows:
        click.echo("(none)")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


@click.group(cls=AdvisorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advisor")
def cli() -> None:
    """Recommend how to fine-tune a vision-language model, before paying for the run.

    \b
    advisor recommend --model lit-offline --dataset fashion-mnist
    advisor signals   --model ViT-B-32 --pretrained openai --dataset folder:./images
    advisor run       --method lora --dataset mnist-5k --shots 16
    """


# ---------------------------------------------------------------------------------- plugins


@cli.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List installed plugins: version, hooks, and the metrics, tuners, datasets and models each provides."""
    from .plugins import plugin_info

    info = plugin_info()
    if as_json:
        emit_json(info)
        return
    rows = []
    for p in info:
        if "error" in p:
            rows.append({"plugin": p["name"], "version": "", "provides": f"FAILED: {p['error']}"})
            continue
        provides = "; ".join(f"{k}: {', '.join(p[k])}" for k in ("metrics", "tuners", "datasets", "models") if p.get(k))
        rows.append({"plugin": p["name"], "version": p["version"], "provides": provides or ", ".join(p["hooks"])})
    print_table(rows, ["plugin", "version", "provides"])


# ---------------------------------------------------------------------------------- history
# (history group: advisor/history_cli section, owned by the history module)

# ---------------------------------------------------------------------------------- embed / cache

# ---------------------------------------------------------------------------------- signals

# ---------------------------------------------------------------------------------- run


def _parse_hparams(items: tuple[str, ...]) -> dict[str, Any]:
    """``--hparam key=value`` pairs; values parsed as JSON when possible (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--hparam")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@cli.command(name="run")
@model_options
@click.option("--dataset", "dataset", default="mnist-5k", show_default=True, envvar="ADVISOR_DATASET",
              help="Dataset: a registered name, folder:PATH, csv:PATH, or torchvision:NAME.")
@click.option("--method", required=True, help="Fine-tuning method (see `advisor plugins`): full, lora, coop, contcoop, tpc_cma.")
@click.option("--shots", type=int, default=16, show_default=True, help="Training images per class (few-shot).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Override the method's default epochs.")
@click.option("--lr", type=float, default=None, help="Override the method's default learning rate.")
@click.option("--batch-size", type=int, default=None)
@click.option("--hparam", "hparams", multiple=True, metavar="KEY=VALUE", help="Any other method hyper-parameter (repeatable).")
@click.option("--ood", multiple=True, help="OOD reference dataset (repeatable; default: the other offline built-ins).")
@click.option("--max-test", type=int, default=500, show_default=True, help="Test images per dataset for accuracy.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... (auto: cuda when present).")
@click.option("--no-record", is_flag=True, help="Measure but do not write the run into the history.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@db_option
@json_option
def run_command(model: str, pretrained: str | None, image_size: int | None, cache_dir: str | None, dataset: str,
                method: str, shots: int, seed: int, epochs: int | None, lr: float | None, batch_size: int | None,
                hparams: tuple[str, ...], ood: tuple[str, ...], max_test: int, device: str, no_record: bool,
                quiet: bool, db: str | None, as_json: bool) -> None:
    """Fine-tune for real, measure before/after (ID, OOD, gap) and record the run in the history."""
    from .runner import run_finetune, summarize
    from .specs import DatasetSpec, ModelSpec

    run = run_finetune(
        ModelSpec(model, pretrained, image_size, cache_dir), DatasetSpec(dataset), method,
        shots=shots, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, hparams=_parse_hparams(hparams),
        ood=list(ood) if ood else None, device=device, db=db, max_test=max_test, record=not no_record, quiet=quiet,
    )
    summary = summarize(run)
    if as_json:
        emit_json({**summary, "ood_before": run.ood_before, "ood_after": run.ood_after, "hparams": run.hparams})
        return
    print_table([{"measure": k, "value": v} for k, v in summary.items()], ["measure", "value"])
    ood_rows = [{"ood dataset": k, "before": run.ood_before[k], "after": run.ood_after[k],
                 "change": run.ood_after[k] - run.ood_before[k]} for k in run.ood_before]
    if ood_rows:
        click.echo()
        print_table(ood_rows)


# ---------------------------------------------------------------------------------- predictor / recommend / report


# ---------------------------------------------------------------------------------- plugin commands


def _register_plugin_commands() -> None:
    from .plugins import load_plugins

    load_plugins().hook.register_commands(cli=cli)


_register_plugin_commands()
