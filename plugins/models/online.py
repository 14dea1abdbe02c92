"""Online mode that fails fast: one short TCP probe of the weights host before any download.

With ``ADVISOR_ONLINE=1`` and no network, huggingface_hub retries every metadata request five
times with exponential back-off (about a minute and a half of "Retrying in 8s" lines) before
open_clip gives up. A single connect with a short timeout answers the same question at once.
When the host cannot be reached the process switches to offline mode, so weights already in
the local cache still load, and anything missing fails with one line that names the host.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

#: Seconds to wait for a TCP connection to a weights host (``ADVISOR_CONNECT_TIMEOUT`` overrides).
CONNECT_TIMEOUT = 3.0

#: Set when a probe failed in this process: "<host:port> cannot be reached (<reason>)".
_unreachable: str | None = None


def offline() -> bool:
    """True when Hugging Face downloads are off (``HF_HUB_OFFLINE``; advisor's default)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    """The Hugging Face endpoint downloads go to (``HF_ENDPOINT`` or huggingface.co)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _timeout() -> float:
    try:
        value = float(os.environ.get("ADVISOR_CONNECT_TIMEOUT", CONNECT_TIMEOUT))
    except ValueError:
        return CONNECT_TIMEOUT
    return value if 0 < value < 600 else CONNECT_TIMEOUT


def probe(url: str) -> str | None:
    """None when a TCP connection to ``url``'s host opens within the timeout, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{url} is not a valid URL"
    try:
        socket.create_connection((host, port), timeout=_timeout()).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{host}:{port} cannot be reached ({reason})"
    return None


def go_offline_unless_reachable(url: str) -> None:
    """In online mode, probe ``url``'s host once; when it cannot be reached, switch this process
    to offline mode (no retries; cached weights still load) and remember why."""
    global _unreachable
    if offline() or _unreachable is not None:
        return
    reason = probe(url)
    if reason is None:
        return
    _unreachable = reason
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read on every request by huggingface_hub.is_offline_mode()
    except ImportError:  # pragma: no cover
        pass


def unreachable() -> str | None:
    """Why online mode was switched off in this process, or None."""
    return _unreachable


def how_to_get(hub_repo: str | None = None) -> str:
    """The advice for missing weights, without suggesting what the user already did."""
    if hub_repo:
        fetch = f"pre-download them (huggingface-cli download {hub_repo} --cache-dir DIR) and pass --weights-dir DIR"
    else:
        fetch = "pass --pretrained /path/to/checkpoint.pt, or pre-download them into --weights-dir DIR"
    if _unreachable is not None:
        return f"{fetch}, or check the network, proxy or HF_ENDPOINT"
    if offline():
        return f"{fetch}, or allow downloads (HF_HUB_OFFLINE=0 / ADVISOR_ONLINE=1)"
    return fetch


def missing_state() -> str:
    """Why weights are not here: offline by choice, offline because the host is unreachable, or a
    failed download."""
    if _unreachable is not None:
        return f"not in the local cache and {_unreachable}"
    if offline():
        return "not in the local cache (HF_HUB_OFFLINE=1)"
    return "could not be downloaded"
