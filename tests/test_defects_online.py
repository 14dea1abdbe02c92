"""Issue 16, online mode without a network: one line at once, not a minute of retries and a
garbled message that suggests what the user already did.

The Hugging Face endpoint is pointed at a closed loopback port; HF_HUB_OFFLINE is unset only in
the subprocess, so nothing here can reach the internet."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from advisor_plugins.models import online


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_probe_tells_an_open_port_from_a_closed_one():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert online.probe(f"http://127.0.0.1:{server.getsockname()[1]}/x") is None
    finally:
        server.close()
    reason = online.probe(f"http://127.0.0.1:{_closed_port()}/x")
    assert reason is not None and "cannot be reached" in reason


def test_online_mode_without_network_fails_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    port = _closed_port()
    env.update(ADVISOR_ONLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"),
               ADVISOR_HOME=str(tmp_path / "home"), ADVISOR_CACHE=str(tmp_path / "cache"))
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    for model in (["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"], ["--model", "hf-hub:timm/ViT-B-16-SigLIP"]):
        r = subprocess.run([sys.executable, "-c", code, "embed", *model, "--dataset", "digits", "--max-images", "4"],
                           capture_output=True, text=True, env=env, timeout=600)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, r.stderr
        assert len(lines) == 1 and lines[0].startswith("Error: weights for "), r.stderr
        assert f"127.0.0.1:{port} cannot be reached" in lines[0]
        assert "Retry" not in r.stderr and "are could" not in lines[0]
        assert "ADVISOR_ONLINE" not in lines[0] and "allow downloads" not in lines[0]


def test_offline_advice_still_says_how_to_allow_downloads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(online, "_unreachable", None)
    assert "ADVISOR_ONLINE=1" in online.how_to_get() and online.missing_state().startswith("not in the local cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert "ADVISOR_ONLINE" not in online.how_to_get() and online.missing_state() == "could not be downloaded"
