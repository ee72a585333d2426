"""Prefect settings for this project, applied through environment variables.

Prefect reads its settings when it is first imported, so these must be set
before ``import prefect``: ``flows/__init__.py`` calls ``apply_defaults()``.
Every value is a default only; an exported variable wins.

- ``PREFECT_HOME``: ``<repo>/.prefect`` (the database of a local server, profiles
  and logs stay inside the project).
- ``PREFECT_SERVER_ANALYTICS_ENABLED=false``: nothing is sent anywhere.
- ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`` for local mode.
- ``PREFECT_API_URL``: unset means local mode (a temporary server per run);
  set it to ``api_url(port)`` to talk to ``prefect server start``.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = PROJECT_ROOT / ".prefect"
DEFAULT_PORT = 4200
WORK_POOL = "concerto-process"


def api_url(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The API URL of a local ``prefect server start --host HOST --port PORT``."""
    return f"http://{host}:{port}/api"


def prefect_env(home: str | os.PathLike | None = None, api: str | None = None) -> dict[str, str]:
    """The variables this project sets for Prefect (for subprocesses and docs)."""
    env = {
        "PREFECT_HOME": str(home or DEFAULT_HOME),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Local mode starts a temporary server and migrates a fresh SQLite
        # database; Prefect's 20 s limit is too short on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if api:
        env["PREFECT_API_URL"] = api
    return env


def apply_defaults() -> None:
    """Set the project's Prefect defaults in ``os.environ`` unless already set."""
    for k, v in prefect_env().items():
        os.environ.setdefault(k, v)
