"""Joining or starting Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import os

from dynagen.core.settings import RaySettings


def ensure_ray(rs: RaySettings | None = None) -> None:
    """Connect to ``rs.address`` or start an embedded local Ray (no-op if Ray is already up)."""
    import ray

    if ray.is_initialized():
        return
    rs = rs or RaySettings()
    # Bind a local cluster to loopback and keep usage stats off (see NOTES: Ray 2.60 otherwise advertises eth0).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if rs.address:
        ray.init(address=rs.address, log_to_driver=True)
    else:
        ray.init(num_cpus=rs.num_cpus, include_dashboard=False, log_to_driver=True)
