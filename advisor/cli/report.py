"""``advisor report``: the HTML report of the history and the predictor."""

from __future__ import annotations

import click

from ..cli_options import (
    db_option,
    emit_json,
    json_option,
    quiet_option,
)


@click.command(name="report")
@db_option
@click.option("-o", "--output", "output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the HTML report.")
@quiet_option(expose=False)
@json_option
def report_command(db: str | None, output: str, as_json: bool) -> None:
    """An HTML report: calibration, held-out predicted vs measured per target, gain vs cost per
    pair with intervals, every signal against measured gain, and the baseline table (PNG plots).
    Progress (the held-out folds, then the plots) goes to stderr on a terminal."""
    from ..report import write_report
    from ..terminal import phase

    with phase(f"building the report {output}"):
        path = write_report(db, output)
    if as_json:
        emit_json({"path": str(path)})
        return
    click.echo(f"Wrote {path}")
