"""``dynagen serve``: run the online app (Ray Serve + FastAPI) until Ctrl-C. Heavy imports stay inside."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dynagen.app.cli.common import exit_with_error, load, quiet_libraries
from dynagen.core.errors import one_line


def serve(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML settings file (section 'serve').")] = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: serve.host = 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="HTTP port (default: serve.port = 8000).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; unset = start an embedded local Ray.")] = None,
) -> None:
    """Serve /v1/steps, /v1/route, /v1/images and /healthz over HTTP until interrupted."""
    settings, _ = load(config, {"serve.host": host, "serve.port": port, "ray.address": address})
    if settings.serve.auth_required() and settings.serve.api_key is None:  # before Ray starts: one line
        exit_with_error(f"serve.host {settings.serve.host} is not loopback: set serve.api_key (env "
                        "DYNAGEN_SERVE__API_KEY) so callers need a bearer token, or bind 127.0.0.1")
    quiet_libraries()
    import time

    from dynagen.core.raycluster import ensure_ray

    try:
        ensure_ray(settings.ray)
        from ray import serve as ray_serve

        from dynagen.app.serve.deployments import start

        url = start(settings)
    except Exception as e:  # a busy port, an unreachable cluster: one line, no traceback
        exit_with_error(f"could not start the app: {one_line(e)}", 1)
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/healthz", timeout=30) as r:
        health = json.loads(r.read())
    auth = "bearer token required" if settings.serve.auth_required() else "no token (loopback)"
    typer.echo(f"dynagen serving on {url} ({health['status']}, {auth}); Ctrl-C to stop")
    for name, state in health["components"].items():
        if state != "ok":
            typer.echo(f"  {name}: {state}", err=True)
    import signal

    def _stop(signum, frame):  # SIGTERM (kill, Kubernetes, systemd) shuts down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("shutting down")
        ray_serve.shutdown()
