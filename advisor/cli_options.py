"""The shared pieces of the ``advisor`` command line: defaults, the environment-variable table,
the error-reporting group, common options (``--db``, ``--json``, ``--device`` ...) and output
helpers. On the floor below ``advisor.cli`` so that command modules elsewhere (``advisor.sweep.cli``,
plugins' ``register_commands``) can use them without importing the CLI itself.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from typing import Any

import click

from .data import DEFAULT_OFFLINE_DATASET
from .errors import AdvisorError

#: The offline defaults: a real dual encoder and real data that install with pip alone (the
#: dataset's reasons are at ``advisor.data.DEFAULT_OFFLINE_DATASET``).
DEFAULT_MODEL = "lit-offline"
DEFAULT_DATASET = DEFAULT_OFFLINE_DATASET

#: Every environment variable the tool reads, with what it does: shown by `advisor --help` and
#: in docs/cli.md (tests/test_cli_conventions.py greps the code for environment reads against it).
ENVIRONMENT: dict[str, str] = {
    "ADVISOR_HOME": "User data directory: the writable history copy, adapters, spool (default: the platform's user data dir).",
    "ADVISOR_CACHE": "Embedding cache directory (default: the platform's user cache dir).",
    "ADVISOR_CACHE_MAX_GB": "Size cap of the embedding cache in GB; least recently used files go first (default 20).",
    "ADVISOR_DB": "History database for --db: a SQLite path or any SQLAlchemy URL.",
    "ADVISOR_DB_TIMEOUT": "Seconds to wait for a locked history database (0 to 86400; default 30).",
    "ADVISOR_REGISTRY": "The shipped read-only history (registry.db) to copy from (default: next to the package).",
    "ADVISOR_MODEL": "Default for --model.",
    "ADVISOR_DATASET": "Default for --dataset.",
    "ADVISOR_DEVICE": "Default for --device (cpu, cuda, cuda:1 ...); also the device whose cost recommend predicts.",
    "ADVISOR_ONLINE": "Set to 1 to allow downloads of model weights (offline by default: HF_HUB_OFFLINE=1 is set).",
    "ADVISOR_CONNECT_TIMEOUT": "Seconds to wait for a connection to a weights host when online (default 3).",
    "ADVISOR_PROGRESS": "1: progress on stderr even when it is not a terminal; 0: never (default: only on a terminal).",
    "ADVISOR_LOAD_PLUGINS": "Comma-separated allow-list of third-party plugins to load (empty: none).",
    "ADVISOR_BLOCK_PLUGINS": "Set to 1 to load no third-party plugin (the test suite does).",
    "ADVISOR_TRACE_PLUGINS": "Set to 1 to print every plugin hook call to stderr.",
    "ADVISOR_MLFLOW": "Set to 1 to log every recorded run to MLflow (as --mlflow).",
    "ADVISOR_MLFLOW_EXPERIMENT": "MLflow experiment for logged runs (as --mlflow-experiment; before MLflow's "
                                 "MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID; default: advisor).",
    "ADVISOR_SPOOL": "Where runs wait when the history cannot be written (default: <user data>/spool).",
    "ADVISOR_SWEEP_HEARTBEAT": "Seconds between a sweep worker's heartbeats (default 15).",
    "COLUMNS": "Width tables are fitted to (default: the terminal's; piped or redirected output is not wrapped).",
    "HF_HUB_OFFLINE": "Hugging Face offline switch; set to 1 by advisor unless ADVISOR_ONLINE is set.",
    "HF_ENDPOINT": "Hugging Face host probed before downloading weights (default https://huggingface.co).",
    "MLFLOW_TRACKING_URI": "MLflow store for --mlflow and `history import-mlflow` (default: MLflow's own).",
    "MLFLOW_RUN_ID": "With --mlflow: the parent MLflow run; each recorded run is logged as its child.",
}

if os.environ.get("ADVISOR_ONLINE") is None:
    # Offline by default: no surprise downloads; ADVISOR_ONLINE=1 lets open_clip / HF fetch weights.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class AdvisorGroup(click.Group):
    """A click group that reports AdvisorError (and a few OS errors) as one line, exit 1."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if ctx.parent is None:  # `advisor --help` only, not every sub-group
            with formatter.section("Environment variables"):
                formatter.write_dl(list(ENVIRONMENT.items()))

    def invoke(self, ctx: click.Context) -> Any:
        from .terminal import set_quiet

        set_quiet(False)  # each invocation starts loud; --quiet / --json set it again
        try:
            return super().invoke(ctx)
        except AdvisorError as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # `advisor history list | head -1`: the reader has what it wanted, which is no error.
            _discard_stdout()
            sys.exit(0)


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush into the closed pipe is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def db_option(f: Any) -> Any:
    """``--db PATH_OR_URL`` (env ``ADVISOR_DB``): the history database."""
    return click.option(
        "--db",
        "db",
        envvar="ADVISOR_DB",
        show_envvar=True,
        default=None,
        metavar="PATH_OR_URL",
        help="History database: a SQLite path or any SQLAlchemy URL. "
        "Default: a user-data copy of the shipped registry.db.",
    )(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def mlflow_option(f: Any) -> Any:
    """``--mlflow`` and ``--mlflow-experiment NAME``: also log every recorded run to MLflow.
    They only set ``ADVISOR_MLFLOW=1`` / ``ADVISOR_MLFLOW_EXPERIMENT``, the switch the built-in
    MLflow plugin reads, so sweep workers (which inherit the environment) log their runs too."""

    def enable(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            os.environ["ADVISOR_MLFLOW"] = "1"
        if os.environ.get("ADVISOR_MLFLOW", "").strip().lower() in ("1", "true", "yes", "on"):
            import importlib.util

            if importlib.util.find_spec("mlflow") is None:
                raise click.UsageError("MLflow logging is on (--mlflow or ADVISOR_MLFLOW) but MLflow is not "
                                       "installed: pip install 'advisor[mlflow]'")

    def experiment(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ["ADVISOR_MLFLOW_EXPERIMENT"] = value

    f = click.option("--mlflow-experiment", metavar="NAME", default=None, expose_value=False, callback=experiment,
                     help="MLflow experiment for --mlflow (env ADVISOR_MLFLOW_EXPERIMENT, then MLFLOW_EXPERIMENT_NAME; "
                          "default: advisor).")(f)
    f = click.option("--mlflow", is_flag=True, expose_value=False, callback=enable,
                     help="Also log each recorded run to MLflow (env ADVISOR_MLFLOW=1; store: MLFLOW_TRACKING_URI).")(f)
    return f


def model_options(f: Any) -> Any:
    """Options that pick a model: ``--model``, ``--pretrained``, ``--image-size``, ``--weights-dir``."""
    f = click.option("--weights-dir", "weights_dir", default=None, metavar="DIR",
                     help="Where open_clip / Hugging Face model weights are downloaded to and looked up "
                          "(default: their own caches). Not the embedding cache: see `advisor cache`.")(f)
    f = click.option("--image-size", type=click.IntRange(min=1), default=None,
                     help="Working resolution in pixels (default: the model's).")(f)
    f = click.option("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path.")(f)
    f = click.option("--model", "model", default=DEFAULT_MODEL, show_default=True, envvar="ADVISOR_MODEL", show_envvar=True,
                     help="Model name: lit-offline, an open_clip architecture, hf-hub:ORG/REPO, or a checkpoint.")(f)
    return f


def dataset_source_options(f: Any) -> Any:
    """``--dataset`` plus the options that shape it (``--classnames``, ``--templates``,
    ``--download``, ``-O KEY=VALUE``); the command receives one ``DatasetSpec`` as ``dataset``."""

    @functools.wraps(f)
    def wrapper(*args: Any, dataset: str, classnames: str | None, templates: str | None, download: bool,
                dataset_option: tuple[str, ...], **kwargs: Any) -> Any:
        from .data import dataset_spec, parse_options

        spec = dataset_spec(dataset, classnames=classnames, templates=templates, download=download,
                            options=parse_options(dataset_option))
        return f(*args, dataset=spec, **kwargs)

    w: Any = wrapper
    w = click.option("-O", "--dataset-option", "dataset_option", multiple=True, metavar="KEY=VALUE",
                     help="Dataset option, e.g. image_column=path, label_column=class (repeatable).")(w)
    w = click.option("--download", is_flag=True, help="Allow torchvision datasets to download (needs a network).")(w)
    w = click.option("--templates", default=None, metavar="FILE_OR_TEMPLATE",
                     help='Prompt template(s): a JSON file or a literal like "a photo of a {}.".')(w)
    w = click.option("--classnames", default=None, metavar="FILE.json", help="Class names (JSON list or {label: name}).")(w)
    w = click.option("--dataset", "dataset", default=DEFAULT_DATASET, show_default=True, envvar="ADVISOR_DATASET", show_envvar=True,
                     help="Dataset: a registered name, folder:PATH, csv:PATH, or torchvision:NAME.")(w)
    return w


#: Training images per class for ``run`` and ``recommend`` (the same default as ``advisor sweep``).
DEFAULT_SHOTS = 16


def dataset_options(f: Any) -> Any:
    """Dataset source options plus the sample to embed: ``--shots``, ``--seed``, ``--max-images``
    (``embed`` and ``signals``; their ``--shots`` cuts the sample, so it has no default)."""
    f = click.option("--max-images", type=click.IntRange(min=1), default=None,
                     help="Cap on images embedded (a seeded, stratified sample; signals default to 2000).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and sampling.")(f)
    f = click.option("--shots", type=click.IntRange(min=1), default=None,
                     help="Embed only K training images per class (default: no few-shot cut, as the history's signals).")(f)
    return dataset_source_options(f)


def shots_option(f: Any) -> Any:
    """``--shots K`` for the commands about fine-tuning (``run``, ``recommend``): one default."""
    return click.option("--shots", type=click.IntRange(min=1), default=DEFAULT_SHOTS, show_default=True,
                        help="Training images per class (few-shot) of the fine-tuning run.")(f)


def device_option(f: Any) -> Any:
    """``--device`` (env ``ADVISOR_DEVICE``), with the same default on every command."""
    return click.option("--device", default="auto", show_default=True, envvar="ADVISOR_DEVICE", show_envvar=True,
                        help="cpu, cuda, cuda:1 ... (auto: cuda when present).")(f)


def quiet_option(f: Any = None, *, expose: bool = True) -> Any:
    """``--quiet`` / ``-q``: no status lines or progress bars on stderr (results and warnings
    still print). Sets ``advisor.terminal``'s quiet switch as soon as it is parsed, so every
    phase of the command follows it; the command receives ``quiet`` unless ``expose=False``
    (``@quiet_option(expose=False)``)."""

    def silence(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            from .terminal import set_quiet

            set_quiet(True)
        return value

    def decorate(g: Any) -> Any:
        return click.option("--quiet", "-q", "quiet", is_flag=True, callback=silence, expose_value=expose,
                            help="No progress lines or bars on stderr.")(g)

    return decorate if f is None else decorate(f)


def import_torch() -> None:
    """Import torch under a status line: it takes 5-20 s on a busy machine, which a person at a
    terminal should not mistake for a hang (``run``, ``signals``, ``embed``)."""
    from .terminal import phase

    if "torch" not in sys.modules:
        with phase("importing torch"):
            import torch  # noqa: F401


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


def table_lines(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """An aligned text table that fits the terminal width (long cells wrap; see advisor.terminal)."""
    if not rows:
        return ["(none)"]
    from .terminal import format_table

    columns = columns or list(rows[0])
    return list(format_table([[_fmt(r.get(c)) for c in columns] for r in rows], columns))


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """``table_lines`` on standard output."""
    for line in table_lines(rows, columns):
        click.echo(line)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)
