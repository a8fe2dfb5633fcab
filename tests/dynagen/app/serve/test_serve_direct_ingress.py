"""``serve.direct_ingress``: ``dynagen serve`` with the Gateway replica listening on serve.port itself (no HTTP proxy).

Ray reads the direct-ingress flag when its processes start, so this runs the real CLI in a subprocess with its own
embedded Ray (the session's Ray has no such flag), and stops that process by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynagen.app.devservers import free_port

requests = pytest.importorskip("requests")


def test_start_refuses_direct_ingress_without_the_cluster_flag(monkeypatch):
    from dynagen.app.serve.deployments import DIRECT_INGRESS_FLAG, start
    from dynagen.core.settings import load_settings

    monkeypatch.delenv(DIRECT_INGRESS_FLAG, raising=False)
    settings, _ = load_settings(overrides={"serve.direct_ingress": True}, env={})
    with pytest.raises(ValueError, match=DIRECT_INGRESS_FLAG):
        start(settings)


def test_cli_serves_steps_without_the_proxy():
    import shutil
    import tempfile

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="dyn-di-")  # short: Ray's socket paths must fit in 107 bytes (pytest's tmp_path is long)
    env = {**os.environ, "DYNAGEN_SERVE__DIRECT_INGRESS": "true", "DYNAGEN_LLM__ROUTER": "random",
           "DYNAGEN_SERVE__INGRESS_MAX_REPLICAS": "1", "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": tmp}
    cli = Path(sys.executable).with_name("dynagen")
    log = Path(tmp) / "serve.log"  # a file, not a pipe: nobody reads a pipe while Ray logs, and a full one blocks
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    try:
        url, health = f"http://127.0.0.1:{port}", None
        for _ in range(240):  # bounded poll while Ray and the models start; no timing assertion
            if proc.poll() is not None:
                break
            try:
                health = requests.get(url + "/healthz", timeout=5)
                break
            except requests.RequestException:  # not listening yet, or busy starting
                time.sleep(1)
        assert health is not None and health.status_code == 200, log.read_text()[-3000:]
        r = requests.post(url + "/v1/steps", json={"prompts": ["a red circle", "two blue dotted squares"]}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["steps"]) == 2 and all(isinstance(v, int) and v > 0 for v in r.json()["steps"])
        assert requests.post(url + "/v1/steps", json={}, timeout=60).status_code == 422
    finally:
        proc.send_signal(signal.SIGTERM)  # the CLI shuts Serve down like on Ctrl-C; its embedded Ray goes with it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
