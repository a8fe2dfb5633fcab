"""Fault injection on the real image job: every input id ends exactly once, as ok+image or failed+reason.

Real Ray, real SeaweedFS on 127.0.0.1, the tiny random model at few steps (compute is not the point here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from faultkit import descendant_pid, make_shards, wait_for

from dynagen.app.devservers import FaultProxy, SeaweedS3
from dynagen.core.settings import load_settings
from dynagen.core.storage import Storage
from pipelines.audit import audit
from pipelines.common import RunError
from pipelines.images import run

pytestmark = pytest.mark.slow
N = 200


def settings(model, **storage):
    over = {"images.model": model, "images.steps": 2, "images.batch_size": 4, "images.group_window": 16,
            "images.cpus_per_actor": 0.5}
    over.update({f"storage.{k}": v for k, v in storage.items()})
    return load_settings(None, over, env={})[0]


def in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def n_metadata(root: Path) -> int:
    d = root / "metadata"
    return len(list(d.glob("*.parquet"))) if d.exists() else 0


def record(row, name, rep, faults, reruns=0, baseline="local"):
    """``baseline``: which clean run ("local" or "s3" destination) the summary compares this scenario's time to."""
    row.update(scenario=name, prompts=N, faults=faults, reruns=reruns, lost=len(rep.lost),
               duplicated=len(rep.duplicated), orphans=len(rep.orphans), baseline=baseline)


# The two clean runs (faults "none") come first (pytest keeps file order): the closing table divides each scenario's
# wall time by the clean run with the same kind of destination ("overhead" column).
def test_clean_run_local_baseline(ray_local, tiny_model, tmp_path, scenario):
    ids = make_shards(tmp_path / "in", N)
    run(settings(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"))
    rep = audit(Storage(str(tmp_path / "out")), ids)
    record(scenario, "clean run, local destination", rep, "none")
    assert rep.clean and rep.ok == N, rep


def test_clean_run_s3_baseline(ray_local, tiny_model, tmp_path, own_s3, scenario):
    ids = make_shards(tmp_path / "in", N)
    dest = f"s3://{own_s3.bucket}/clean"
    st = settings(tiny_model, **_creds(own_s3))
    run(st, str(tmp_path / "in"), dest)
    rep = audit(Storage(dest, st.storage), ids)
    record(scenario, "clean run, S3 destination", rep, "none", baseline="s3")
    assert rep.clean and rep.ok == N, rep


def test_diffusion_actor_killed_mid_run(ray_local, tiny_model, tmp_path, scenario):
    ids = make_shards(tmp_path / "in", N)
    out = tmp_path / "out"
    t, box = in_thread(lambda: run(settings(tiny_model), str(tmp_path / "in"), str(out)))
    wait_for(lambda: n_metadata(out) >= 1)
    pid = wait_for(lambda: descendant_pid("DiffusionActor"))
    os.kill(pid, signal.SIGKILL)  # our own Ray worker, by PID
    t.join(600)
    assert "error" not in box, box.get("error")
    rep = audit(Storage(str(out)), ids)
    record(scenario, "diffusion actor SIGKILL", rep, "1 kill")
    assert rep.clean and rep.ok == N, rep


def _cli(args, env, **kw):
    exe = Path(sys.executable).with_name("dynagen")
    return subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **kw)


def test_driver_killed_then_rerun_generates_nothing_twice(tiny_model, tmp_path, scenario):
    ids = make_shards(tmp_path / "in", N)
    out = tmp_path / "out"
    args = ["run", "images", "--prompts", str(tmp_path / "in"), "--out", str(out), "--steps", "2",
            "--model", tiny_model, "--batch-size", "4"]
    env = {**os.environ, "DYNAGEN_IMAGES__GROUP_WINDOW": "16", "DYNAGEN_IMAGES__CPUS_PER_ACTOR": "0.5",
           "DYNAGEN_RAY__NUM_CPUS": "2"}
    p = _cli(args, env)
    try:
        wait_for(lambda: n_metadata(out) >= 2 or p.poll() is not None, timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started: our process group
        p.wait()
    committed = {m for m in _ids_in_metadata(out)}
    assert 0 < len(committed) < N, "kill should land mid-run"
    p2 = _cli(args, env)
    text = p2.communicate(timeout=600)[0].decode()
    assert p2.returncode == 0, text
    summaries = [json.loads(f.read_text()) for f in (out / "runs").glob("*.json")]
    (second,) = [s for s in summaries if s["skipped"] > 0]
    # The killed run left its start record (the sink's on_write_start), still "running": it never finished.
    assert sorted(s["status"] for s in summaries) == ["ok", "running"] and second["status"] == "ok"
    rep = audit(Storage(str(out)), ids)
    record(scenario, "driver SIGKILL + rerun", rep, "1 kill", reruns=1)
    assert rep.clean and rep.ok == N, rep
    # Nothing committed before the kill was generated again: the rerun did exactly the rest.
    assert second["skipped"] == len(committed) and second["ok"] == N - len(committed)


def _ids_in_metadata(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for f in (out / "metadata").glob("*.parquet") for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


@pytest.fixture
def own_s3(tmp_path):
    """A SeaweedFS of this test's own, so stopping it affects no other test."""
    server = SeaweedS3(tmp_path / "weed").start()
    yield server
    server.stop()


def _creds(server, endpoint=None):
    return dict(endpoint_url=endpoint or server.endpoint, access_key_id=server.access_key,
                secret_access_key=server.secret_key)


def test_s3_outage_mid_run_is_retried(ray_local, tiny_model, tmp_path, own_s3, scenario):
    ids = make_shards(tmp_path / "in", N)
    dest = f"s3://{own_s3.bucket}/outage"
    st = settings(tiny_model, max_attempts=12, **_creds(own_s3))
    store = Storage(dest, st.storage)
    t, box = in_thread(lambda: run(st, str(tmp_path / "in"), dest))
    wait_for(lambda: len(store.list("metadata")) >= 1, timeout=300)
    own_s3.stop()
    time.sleep(5)
    own_s3.start()
    t.join(600)
    assert "error" not in box, box.get("error")
    rep = audit(store, ids)
    record(scenario, "S3 down ~5 s mid-run", rep, "1 outage", baseline="s3")
    assert rep.clean and rep.ok == N, rep


def test_s3_down_past_limit_fails_clearly_then_rerun_finishes(ray_local, tiny_model, tmp_path, own_s3, scenario):
    ids = make_shards(tmp_path / "in", N)
    dest = f"s3://{own_s3.bucket}/longoutage"
    st = settings(tiny_model, max_attempts=2, connect_timeout_s=1, **_creds(own_s3))
    store = Storage(dest, st.storage)
    t, box = in_thread(lambda: run(st, str(tmp_path / "in"), dest))
    wait_for(lambda: len(store.list("metadata")) >= 1, timeout=300)
    own_s3.stop()
    t.join(600)
    assert isinstance(box.get("error"), RunError), box
    msg = str(box["error"])
    assert "rerun the same command" in msg and "\n" not in msg
    own_s3.start()
    s = run(st, str(tmp_path / "in"), dest)
    rep = audit(store, ids)
    record(scenario, "S3 down past retry limit + rerun", rep, "1 outage", reruns=1, baseline="s3")
    assert rep.clean and rep.ok == N and s.skipped > 0, rep


def test_transient_s3_errors_through_fault_proxy(ray_local, tiny_model, tmp_path, own_s3, scenario):
    with FaultProxy(own_s3.ports["s3"], slowdown_every=7, drop_every=13) as proxy:
        st = settings(tiny_model, max_attempts=8, **_creds(own_s3, proxy.endpoint))
        src = Storage(f"s3://{own_s3.bucket}/in", st.storage)
        ids = make_shards(tmp_path / "in", N)
        for f in sorted((tmp_path / "in").glob("*.jsonl")):
            src.put_bytes(f.name, f.read_bytes())
        dest = f"s3://{own_s3.bucket}/proxied"
        run(st, f"s3://{own_s3.bucket}/in", dest)
        faults = f"{proxy.slowdowns}×503, {proxy.drops} drops"
        assert proxy.slowdowns > 0 and proxy.drops > 0
    rep = audit(Storage(dest, settings(tiny_model, **_creds(own_s3)).storage), ids)
    record(scenario, "503 SlowDown + dropped connections", rep, faults, baseline="s3")
    assert rep.clean and rep.ok == N, rep
