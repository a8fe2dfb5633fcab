"""Starting an embedded Ray the way every CLI run does: token auth on, and no warning line about it."""

import os
import subprocess
import sys


def test_embedded_ray_keeps_token_auth_on_without_a_warning(tmp_path):
    # A fresh process and a HOME without ~/.ray/auth_token, as on a new machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    code = ("import ray\n"
            "from dynagen.core.raycluster import ensure_ray\n"
            "from dynagen.core.settings import RaySettings\n"
            "ensure_ray(RaySettings(num_cpus=1))\n"
            "import os\n"
            "print(os.environ['RAY_AUTH_MODE'], ray.get(ray.put(1)))\n"
            "ray.shutdown()\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["token", "1"]
    assert "Token authentication" not in p.stderr and "WARNING" not in p.stderr, p.stderr
    assert not (tmp_path / ".ray").exists()  # the token lived in the process's env only


_REUSE = """
import os, time, ray
from dynagen.core.raycluster import ensure_ray
from dynagen.core.settings import RaySettings
ensure_ray(RaySettings(num_cpus=2))

@ray.remote(num_cpus=1)
class Busy:  # holds a CPU, as the diffusion actor does
    def pid(self):
        return os.getpid()

@ray.remote(num_cpus=0.25)
def short():  # a read or write task between the actor's calls
    time.sleep(0.3)
    return os.getpid()

# A job's other actors (the ledger, Ray Data's stats and coordinator actors) hold no CPU but are workers too.
actors = [Busy.remote()] + [Busy.options(num_cpus=0).remote() for _ in range(3)]
ray.get([a.pid.remote() for a in actors])
rounds = []
for r in range(3):
    if r:
        time.sleep(2.0)  # idle longer than Ray's idle-worker timeout (1 s)
    rounds.append(set(ray.get([short.remote() for _ in range(4)])))
print(max(len(r) for r in rounds), len(set().union(*rounds)))
ray.shutdown()
"""


def test_an_embedded_ray_keeps_its_idle_workers_for_the_next_short_tasks(tmp_path):
    """With Ray's default (idle workers ≤ CPUs) the idle workers were ended after ~1 s, so each round of short tasks
    between the actor's calls paid fresh Python workers' start-up next to the actor's compute (measured here: 8
    workers for 3 rounds of 4 tasks)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_num_workers_soft_limit"} | {"HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", _REUSE], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    per_round, in_all = map(int, p.stdout.split())
    assert in_all == per_round, p.stdout  # the same workers every round
