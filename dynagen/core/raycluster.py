"""Joining or starting Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import os

from dynagen.core.settings import RaySettings


def _explicit_token_auth() -> None:
    """Token auth on for an embedded local Ray (its default since 2.59), said explicitly: left to its default, Ray
    warns about it on every run. RAY_AUTH_MODE set by the user wins. Where no token exists yet (Ray would write
    ~/.ray/auth_token), this process's private cluster gets a random one in its env: on, and nothing written."""
    import secrets
    from pathlib import Path

    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or Path("~/.ray/auth_token").expanduser().is_file()):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    from ray._raylet import Config  # Ray caches its config at import: re-read it, as its own token set-up does

    Config.initialize("")


# Ray keeps about as many workers as the node has CPUs and ends idle ones beyond that after ~1 s. A job's actors count
# too, so on a 2-CPU node every window's write task started a fresh Python worker (~0.8 CPU-s of imports) beside the
# diffusion actor's compute. Idle workers cost memory (~0.2 GB each), not CPU.
IDLE_WORKERS = 8


def local_ray_env() -> None:
    """Environment for Ray, set before ``ray.init`` (what the user set wins): loopback only (see NOTES: Ray 2.60
    otherwise advertises eth0), no usage stats, and for a Ray this process starts, a few idle workers kept for the
    short tasks a job runs between its actors' calls."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_num_workers_soft_limit", str(IDLE_WORKERS))


def ensure_ray(rs: RaySettings | None = None) -> None:
    """Connect to ``rs.address`` or start an embedded local Ray (no-op if Ray is already up)."""
    import ray

    if ray.is_initialized():
        return
    rs = rs or RaySettings()
    local_ray_env()
    if rs.address:
        ray.init(address=rs.address, log_to_driver=True)
    else:
        _explicit_token_auth()
        ray.init(num_cpus=rs.num_cpus, include_dashboard=False, log_to_driver=True)
