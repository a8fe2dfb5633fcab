"""Autoscaling, shown locally: the image job's actor pool drives a worker type up from 0 and back down after idle.

    python bench/autoscaling.py [--smoke-test] [--model DIR] [--out bench/results/autoscaling.json]

Ray's fake multi-node provider (what ``ray.cluster_utils.AutoscalingCluster`` uses) runs the real autoscaler
(monitor + resource-demand scheduler) and starts "nodes" as extra raylets on this machine. We start it ourselves:
``AutoscalingCluster.start()`` force-stops every Ray process on the machine first (fatal on a shared machine), and
its config template is missing from the Ray wheel. Our head is our own subprocess (own temp dir, free ports), stopped
by its process group.

The cluster mirrors infra/raycluster.autoscaler.yaml: a head with 0 CPUs (no work on the head) and one worker type
``cpu`` with min 0 / max ``MAX_WORKERS``. The job asks for diffusion actors of ``CPUS_PER_ACTOR`` CPUs each
(``images.actors_min/actors_max``); the autoscaler adds nodes for them (and for the read/write tasks), and removes
nodes idle for ``IDLE_TIMEOUT_S`` once the job is done. This is a bench, not a test: it needs ~3-4 GB and a few
minutes on 2 cores (node start-up dominates), too heavy for the test suite.

Mapping to KubeRay (infra/README.md): worker type ``cpu`` ↔ ``workerGroupSpecs[cpu]``; ``min_workers/max_workers``
↔ ``minReplicas/maxReplicas``; node ``resources.CPU`` ↔ the container's CPU limit; ``idle_timeout_minutes`` ↔
``autoscalerOptions.idleTimeoutSeconds``; a GPU type with ``GPU: 1`` ↔ the gpu group with ``nvidia.com/gpu: 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynagen.app.devservers import free_port  # noqa: E402  (after the path insert)

# Tuning constants (why beside each).
WORKER_CPUS = 1  # one diffusion actor (CPUS_PER_ACTOR) per node, so actors ↔ nodes is 1:1 and easy to read
CPUS_PER_ACTOR = 0.75  # leaves 0.25 CPU per node for the light read/claim/write tasks (LIGHT_CPU in the pipeline)
MAX_WORKERS = 2  # 2 cores: two extra raylets + actors is what this machine holds
ACTORS_MAX = 2  # the pool may grow to 2 actors → up to 2 nodes
IDLE_TIMEOUT_S = 15  # fast scale-down for the demo (KubeRay sample: 300 s)
N_PROMPTS, SMOKE_PROMPTS = 64, 16
STEPS = 2  # fixed small step count: the subject is scaling, not images
SCALE_DOWN_WAIT_S = 240  # give up waiting for scale-down after this long


def autoscaling_config(gcs_address: str) -> dict:
    """The fake multi-node cluster config: Ray's fake_multi_node example with our node types."""
    return {
        "cluster_name": "dynagen-fake",
        "max_workers": MAX_WORKERS,
        "provider": {
            "type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else worker raylets look for a GCS on :6379 (someone else's cluster)
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": WORKER_CPUS}, "node_config": {}, "min_workers": 0,
                    "max_workers": MAX_WORKERS},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


class FakeAutoscalingHead:
    """``ray start --head --block --autoscaling-config`` with the fake provider, as our own process group."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "FakeAutoscalingHead":
        cfg = self.workdir / "autoscaling.json"
        cfg.write_text(json.dumps(autoscaling_config(self.gcs_address)))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        ray_bin = Path(sys.executable).with_name("ray")
        args = [str(ray_bin), "start", "--head", "--block", f"--autoscaling-config={cfg}", "--num-cpus=0",
                f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.workdir / 'ray'}",
                "--include-dashboard=false", f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        self.proc = subprocess.Popen(args, env=env, stdout=open(self.workdir / "head.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"head exited ({self.proc.returncode}); see {self.workdir / 'head.log'}")
            if "Ray runtime started" in (self.workdir / "head.log").read_text(errors="replace"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"head not up after {timeout}s; see {self.workdir / 'head.log'}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # fake worker raylets were started inside our group
        except ProcessLookupError:
            pass
        self.proc = None


class NodeWatch:
    """Samples the alive worker nodes (and their CPUs) once a second in a thread: the scaling timeline."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray

        while not self._stop.is_set():
            workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
            self.samples.append((round(time.time() - self.t0, 1), len(workers)))
            self._stop.wait(1.0)

    def start(self) -> "NodeWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_PROMPTS} prompts instead of {N_PROMPTS}")
    p.add_argument("--model", help="diffusers folder (default: a tiny random pipeline built here)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "autoscaling.json"))
    a = p.parse_args()
    n = SMOKE_PROMPTS if a.smoke_test else N_PROMPTS
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})

    work = Path(tempfile.mkdtemp(prefix="dynagen-autoscale-"))
    model = a.model
    if not model:
        from dynagen.world.tinymodel import build_pipeline

        model = str(work / "tiny-random")
        build_pipeline(seed=0).save_pretrained(model)
    prompts = work / "prompts"
    prompts.mkdir()
    for s in range(4):  # several shards → several read tasks/blocks, so both actors get work
        rows = [json.dumps({"id": f"a{s}-{i}", "prompt": f"shape {s} {i}"}) for i in range(n // 4)]
        (prompts / f"p{s}.jsonl").write_text("\n".join(rows) + "\n")

    head = FakeAutoscalingHead(work).start()
    metrics: dict = {"prompts": n, "max_workers": MAX_WORKERS, "cpus_per_actor": CPUS_PER_ACTOR,
                     "actors_max": ACTORS_MAX, "idle_timeout_s": IDLE_TIMEOUT_S}
    try:
        import ray

        from dynagen.core.settings import load_settings
        from pipelines.images import run

        ray.init(address=head.gcs_address, log_to_driver=False)
        watch = NodeWatch().start()
        time.sleep(2)
        metrics["workers_before"] = watch.now()
        print(f"workers before the job: {metrics['workers_before']}", flush=True)

        # 1. The job: its actor pool (and tasks) ask for CPUs the head does not have → the autoscaler adds nodes.
        settings, _ = load_settings(None, {
            "ray.address": head.gcs_address, "images.model": model, "images.steps": STEPS, "images.batch_size": 4,
            "images.actors_min": 1, "images.actors_max": ACTORS_MAX, "images.cpus_per_actor": CPUS_PER_ACTOR,
            "images.group_window": 8,
        }, env={})
        t_job = time.time() - watch.t0
        summary = run(settings, str(prompts), str(work / "out"))
        t_done = time.time() - watch.t0
        metrics.update(images_ok=summary.ok, job_s=round(t_done - t_job, 1),
                       peak_workers=max(c for _, c in watch.samples))
        print(f"job: {summary.ok} images in {metrics['job_s']} s; peak workers {metrics['peak_workers']}", flush=True)

        # 2. Idle: nodes without work for IDLE_TIMEOUT_S are removed, down to min_workers (0).
        deadline = time.time() + SCALE_DOWN_WAIT_S
        while watch.now() > 0 and time.time() < deadline:
            time.sleep(1)
        t_zero = time.time() - watch.t0
        watch.stop()
        up = next((t for t, c in watch.samples if c > 0), None)
        metrics.update(
            first_worker_after_s=None if up is None else round(up - t_job, 1),
            workers_after=watch.now(),
            scale_down_after_job_s=round(t_zero - t_done, 1) if watch.now() == 0 else None,
            timeline=watch.samples,
        )
        ok = metrics["workers_before"] == 0 and metrics["peak_workers"] >= 1 and metrics["workers_after"] == 0
        metrics["scaled_up_and_down"] = ok
        print(f"first worker {metrics['first_worker_after_s']} s after the job started; back to 0 workers "
              f"{metrics['scale_down_after_job_s']} s after it ended → {'OK' if ok else 'NOT SHOWN'}", flush=True)
        ray.shutdown()
    finally:
        head.stop()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(metrics, indent=2))
    print(f"metrics: {a.out}")
    return 0 if metrics.get("scaled_up_and_down") else 1


if __name__ == "__main__":
    sys.exit(main())
