"""The command line's error contract: usage mistakes exit 2 with click's usage message; problems
a user causes exit 1 with one ``Error: ...`` line; never a traceback."""

from __future__ import annotations

import pytest

import advisor


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["history", "frobnicate"], "No such command 'frobnicate'"),
    (["history", "list", "--colour"], ("No such option", "--colour")),
    (["plugins", "--yaml"], ("No such option", "--yaml")),
    (["history", "export", "--format", "xml"], "Invalid value for '--format'"),
    (["history", "add"], "Missing argument 'FILE'"),
    (["history", "add", "/no/such/file.csv"], "does not exist"),
    (["history", "show"], "Missing argument 'RUN_ID'"),
])
def test_usage_errors_exit_2(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: advisor")
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in result.stderr


def test_user_errors_exit_1_with_one_line(cli, tmp_path):
    from advisor.errors import AdvisorError, HistoryError

    assert issubclass(HistoryError, AdvisorError)
    result = cli("history", "list", "--db", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == f"Error: database path {tmp_path} is a directory\n"
    assert result.stdout == ""


def test_help_and_version(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("history", "plugins"):
        assert command in result.stdout
    history_help = cli("history", "--help").stdout
    for sub in ("add", "list", "show", "export", "path"):
        assert f"  {sub} " in history_help
    assert cli("--version").stdout.strip() == f"advisor, version {advisor.__version__}"
