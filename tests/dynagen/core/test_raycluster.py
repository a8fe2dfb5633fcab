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
