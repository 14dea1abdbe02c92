"""The ``advisor`` command line: one click group, a module per command or sub-group.

User-caused problems raise ``AdvisorError``; ``AdvisorGroup`` turns them into a one-line
``Error: ...`` and exit code 1, without a traceback. Commands import heavy modules (torch,
open_clip, lightgbm) inside their bodies so ``advisor --help`` stays fast.

Every command is registered here, in one place: the built-in ones from the modules of this
package (``plugins``, ``history``, ``embed`` with ``cache``, ``signals``, ``run``, ``predictor``,
``recommend``, ``report``), the sweep commands from ``advisor.sweep.cli``, and third-party ones
through the ``register_commands`` hook. The shared options and output helpers live one floor
down in ``advisor.cli_options`` (``DEFAULT_SHOTS`` and ``ENVIRONMENT`` re-exported here).
"""

from __future__ import annotations

import click

from .._version import __version__
from ..cli_options import DEFAULT_SHOTS, ENVIRONMENT, AdvisorGroup  # noqa: F401  (the first two re-exported)
from .embed import cache_group, embed_command
from .history import history_group
from .plugins import plugins_command
from .predictor import predictor_group
from .recommend import recommend_command
from .report import report_command
from .run import run_command
from .signals import signals_command


@click.group(cls=AdvisorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advisor")
def cli() -> None:
    """Recommend how to fine-tune a vision-language model, before paying for the run.

    \b
    advisor recommend --model lit-offline --dataset fashion-mnist
    advisor signals   --model ViT-B-32 --pretrained openai --dataset folder:./images
    advisor run       --method lora --dataset mnist-5k --shots 16
    """


for _command in (plugins_command, history_group, embed_command, cache_group, signals_command, run_command,
                 predictor_group, recommend_command, report_command):
    cli.add_command(_command)


def _register_sweep_commands() -> None:
    from ..sweep.cli import import_spool_command, refresh_signals_command, sweep_group

    cli.add_command(sweep_group)
    history_group.add_command(import_spool_command)
    history_group.add_command(refresh_signals_command)


_register_sweep_commands()


def _register_plugin_commands() -> None:
    from ..plugins import register_commands

    register_commands(cli)  # a plugin that raises is reported by name; --help keeps working


_register_plugin_commands()
