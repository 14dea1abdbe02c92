"""The ``advisor plugins`` command: what every installed plugin provides."""

from __future__ import annotations

import click

from ..cli_options import (
    emit_json,
    json_option,
    print_table,
)


@click.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List installed plugins: version, hooks, and the metrics, tuners, datasets, models and
    executors each provides (* marks our reconstructions of a paper's method)."""
    from ..plugins import KINDS, plugin_info

    info = plugin_info()
    if as_json:
        emit_json(info)
        return
    rows = []
    marked = False
    for p in info:
        if "error" in p:
            rows.append({"plugin": p["name"], "version": "", "provides": f"FAILED: {p['error']}"})
            continue
        recon = set(p.get("reconstructed") or ())
        marked = marked or bool(recon)
        provides = "; ".join(f"{k}: {', '.join(n + ('*' if n in recon else '') for n in p[k])}"
                             for k in KINDS if p.get(k))
        rows.append({"plugin": p["name"], "version": p["version"], "provides": provides or ", ".join(p["hooks"])})
    print_table(rows, ["plugin", "version", "provides"])
    if marked:
        click.echo("* our reconstruction of a paper's method, not its official code (docs/tuners.md, docs/signals.md)")
