"""Progress a person sees (issue 16): each long phase of `run`, `signals` and `embed` says what it
is doing on stderr when stderr is a terminal (a real pseudo-terminal here), or when
ADVISOR_PROGRESS=1 forces it; pipes and logs stay clean."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

CODE = "import sys; from advisor.cli import cli; sys.exit(cli())"
EMBED = ["embed", "--model", "tiny-vit", "--dataset", "digits", "--max-images", "40", "--no-cache", "--device", "cpu"]


def _in_a_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``advisor ARGS`` with stdin/stdout/stderr on a pseudo-terminal; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stderr is the terminal, 120 x 40 like a real one (a new pty is 0 x 0)
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "ADVISOR_PROGRESS"}
        os.execve(sys.executable, [sys.executable, "-c", CODE, *args], env)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_embed_in_a_terminal_names_its_phases():
    code, output = _in_a_terminal(EMBED)
    assert code == 0, output
    assert "advisor: loading model tiny-vit ..." in output
    assert "embedding" in output  # the tqdm bar of the batched pass


def test_embed_into_a_pipe_prints_no_progress():
    env = {k: v for k, v in os.environ.items() if k != "ADVISOR_PROGRESS"}
    proc = subprocess.run([sys.executable, "-c", CODE, *EMBED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "advisor:" not in proc.stderr and "embedding" not in proc.stderr


@pytest.mark.slow
def test_run_reports_model_load_evaluation_and_training(cli, tmp_path):
    """ADVISOR_PROGRESS=1 stands in for a terminal (CliRunner's stderr is not one)."""
    args = ["run", "--method", "coop", "--model", "tiny-vit", "--dataset", "digits", "--shots", "1", "--epochs", "1",
            "--max-images", "20", "--ood", "faces", "--device", "cpu", "--no-record", "--db", str(tmp_path / "h.db")]
    # A cold start: its own cache (else an earlier test's signals for this pair are reused); the
    # run's session is its own, so the model is always loaded (and reported) by this run.
    env = {"ADVISOR_PROGRESS": "1", "ADVISOR_CACHE": str(tmp_path / "cache")}
    result = cli(*args, env=env)
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert "advisor: loading model tiny-vit ..." in err
    assert "advisor: evaluating on 20 images ..." in err  # zero-shot and after training
    assert "training" in err  # the step bar
    assert "advisor: computing signals" in err
    assert "advisor:" not in result.stdout
    quiet = cli(*args, "--quiet", env=env)
    assert quiet.exit_code == 0 and "advisor:" not in quiet.stderr
