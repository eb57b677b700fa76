"""Which backend a command line asked for, decided without importing any backend's client
library: ``pi-dash status`` on a directory must not pay for importing redis-py."""

from __future__ import annotations

import os

ENV_REDIS = "PI_DASH_REDIS"


def redis_url(cli_url: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """``--redis URL``, else ``$PI_DASH_REDIS``, else ``None`` (use the directory)."""
    env = os.environ if env is None else env
    return cli_url or env.get(ENV_REDIS) or None
