"""``dynagen submit`` / ``dynagen jobs`` end to end against a real local Ray head (Ray Jobs API, token auth on).

One head per module (~8 s, ~1.6 GB): ``ray start --head --block`` as our own subprocess, own temp dir and free ports,
stopped by its process group (never ``ray`` CLI stop, which would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynagen.app.cli import app
from dynagen.app.cli.submit import SubmitError, entrypoint, job_payload, resolve_token
from dynagen.app.devservers import free_port
from dynagen.core.settings import load_settings

runner = CliRunner()
TOKEN = "dynagen-test-token-0123456789abcdef"
PROMPTS = ["a red circle", "a blue square", "a green star on black", "two yellow dots"]


class RayHead:
    """A Ray head with the Jobs API on 127.0.0.1, token auth on (as production clusters should have it)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.dashboard_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.ray_tmp: Path | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180.0) -> "RayHead":
        venv_bin = Path(sys.executable).parent
        # A clean env: no AWS_*/DYNAGEN_* from the test process, so a job only has what `submit` sends it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DYNAGEN_", "RAY_"))}
        env.update({
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",  # the entrypoint's `python` is the venv's
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1",
        })
        # A short temp dir: Ray's dashboard modules open AF_UNIX sockets under <temp>/session_<stamp>/sockets/, and
        # pytest's /tmp/pytest-of-root/pytest-NN/rayhead0/ray pushed dash_MetricsHead past the 107-byte limit.
        tmp = Path(tempfile.mkdtemp(prefix="dgray-"))
        self.ray_tmp = tmp
        # A fixed runtime-env-agent port: with port 0 the Ray client server must look the port up in GCS within 30 s,
        # and on a loaded 2-core CI runner it missed that window and took the whole head down.
        args = [
            str(venv_bin / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
            f"--port={free_port()}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--temp-dir={tmp}", "--disable-usage-stats",
        ]
        log = open(self.workdir / "head.log", "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()  # reap whatever the head left in its process group
                raise RuntimeError(f"ray head exited with {code}; see {self.workdir / 'head.log'}")
            if self._jobs_api_up():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Ray Jobs API not up after {timeout}s; see {self.workdir / 'head.log'}")

    def _jobs_api_up(self) -> bool:
        req = urllib.request.Request(f"{self.address}/api/jobs/", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM the head (``ray start`` shuts its own processes down in order), wait; then SIGKILL our process
        group so nothing it started survives."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)  # a short graceful drain; past that, the group SIGKILL below
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers share the group (start_new_session)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.proc = None
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    # One retry: on a badly overloaded machine a head subprocess can miss its 30 s GCS registration window.
    try:
        h = RayHead(tmp_path_factory.mktemp("rayhead")).start()
    except RuntimeError:
        h = RayHead(tmp_path_factory.mktemp("rayhead")).start()
    yield h
    h.stop()


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)


def entrypoint_c(code: str) -> str:
    import shlex

    return f"python -c {shlex.quote(code)}"


def invoke(args, **kw):
    r = runner.invoke(app, args, env={"COLUMNS": "200"}, **kw)
    return r, r.stdout, r.stderr


# ---- pure units (no Ray) -----------------------------------------------------------------------------------------


def test_payload_has_no_secrets_and_relative_repo_paths(tmp_path):
    root = Path(__file__).resolve().parents[4]
    settings, _ = load_settings(None, {
        "storage.access_key_id": "AKIA-VISIBLE", "storage.secret_access_key": "s3cr3t-value",
        "storage.endpoint_url": "http://127.0.0.1:9", "images.model": str(root / "models" / "tiny-sd"),
        "images.stepsaver": str(tmp_path / "elsewhere"), "images.steps": 2, "ray.num_cpus": 2,
    }, env={})
    payload, env = job_payload(settings, root)
    data = json.loads(payload)
    assert "s3cr3t-value" not in payload and "AKIA-VISIBLE" not in payload and "****" not in payload
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA-VISIBLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    assert data["storage"] == {"endpoint_url": "http://127.0.0.1:9"}
    assert data["images"] == {"model": "models/tiny-sd", "stepsaver": str(tmp_path / "elsewhere"), "steps": 2}
    assert data["ray"] == {"address": "auto"}  # join the cluster the job runs on
    assert "llm" not in data  # defaults are resolved on the cluster, not copied from this machine


def test_token_sources_in_ray_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert resolve_token(f, env={"RAY_AUTH_TOKEN": "from-env"}) == "from-file"
    assert resolve_token(None, env={"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(f)}) == "from-env"
    assert resolve_token(None, env={"RAY_AUTH_TOKEN_PATH": str(f)}) == "from-file"
    assert resolve_token(None, env={}) is None
    with pytest.raises(SubmitError, match="RAY_AUTH_MODE=token but no token"):
        resolve_token(None, env={"RAY_AUTH_MODE": "token"})
    with pytest.raises(SubmitError, match="cannot read"):
        resolve_token(tmp_path / "missing", env={})


def test_entrypoint_is_shell_safe():
    line = entrypoint("python", "jobs.run_images", ["--settings-json", '{"a": "it\'s $HOME"}', "--out", "s3://b/p"])
    assert line.startswith("python -m jobs.preflight && python -m jobs.run_images --settings-json ")
    assert "'\"'\"'" in line


@pytest.fixture
def dead_address():
    """A port we hold bound but never listen on: connections are refused, and no other process can take it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_address_is_one_line(tmp_path, dead_address):
    address = dead_address
    r, out, err = invoke(["submit", "images", "--prompts", "p.jsonl", "--out", str(tmp_path), "--address", address])
    assert r.exit_code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray Jobs API at " + address), err
    r, out, err = invoke(["jobs", "list", "--address", address])
    assert r.exit_code == 2 and "cannot reach" in err, (out, err)


def test_help_lists_every_job_and_the_run_options():
    r, out, _ = invoke(["submit", "--help"])
    assert r.exit_code == 0 and all(k in out for k in ("images", "llm", "nightly"))
    r, out, _ = invoke(["submit", "images", "--help"])
    for flag in ("--prompts", "--out", "--steps", "--model", "--limit", "--skip-bad-shards", "--address", "--wait",
                 "--token-file", "--env"):
        assert flag in out, flag
    r, out, _ = invoke(["jobs", "--help"])
    assert all(k in out for k in ("list", "status", "logs", "stop"))


def test_submit_takes_every_option_of_the_local_run():
    """`submit images/llm` and `run images/llm` must not drift: every job option of the local run exists on submit
    (the local run's --address is the only one that means something else there)."""
    import typer.main

    from dynagen.app.cli import app

    def options(*path):
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        return {o for p in cmd.params for o in p.opts}

    for job in ("images", "llm"):
        missing = options("run", job) - options("submit", job) - {"--address"}
        assert not missing, f"submit {job} lacks {sorted(missing)}"
        # One definition (dynagen/app/cli/options.py): besides submit's own Jobs API options they are the same set.
        assert options("submit", job) - options("run", job) == {
            "--wait", "--token-file", "--env", "--python", "--submission-id"}


def test_job_flags_are_settings_with_the_schema_help():
    """Each job flag sets one setting and carries that setting's description as its help: flag and setting
    cannot disagree about what the option means."""
    import typer.main

    from dynagen.app.cli import app
    from dynagen.app.cli.options import IMAGE_FLAGS, LLM_FLAGS
    from dynagen.core.settings import EMBEDDED_MODELS, describe

    defaults = {k: v for k, v, _ in describe(*load_settings(env={}))}
    embedded = {f"{section}.{key}": name for section, key, name in EMBEDDED_MODELS}
    for group, flags in (("images", IMAGE_FLAGS), ("llm", LLM_FLAGS)):
        for cmd in ("run", "submit"):
            params = {p.name: p for p in typer.main.get_command(app).commands[cmd].commands[group].params}
            for f in flags:
                assert f.key in defaults and f.key.startswith(group + ".")
                help_ = params[f.name].help
                shown = help_[help_.rindex("(setting: "):]
                # The default the help shows is the one `config show` prints (unset: none shown).
                value = defaults[f.key]
                if f.key in embedded:  # named, not its folder on this machine
                    assert value.endswith(embedded[f.key])
                    assert shown == f"(setting: {f.key}, default the embedded {embedded[f.key]})", shown
                elif value in (None, "", [], "None"):
                    assert shown == f"(setting: {f.key})", shown
                else:
                    expected = {"True": "on", "False": "off"}.get(value, value)
                    assert shown == f"(setting: {f.key}, default {expected})", shown


def test_submit_llm_unreachable_is_one_line(tmp_path, dead_address):
    address = dead_address
    r, _, err = invoke(["submit", "llm", "--prompts", "p.jsonl", "--out", str(tmp_path), "--address", address])
    assert r.exit_code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_submit_nightly_rejects_bad_file_before_connecting(tmp_path):
    bad = tmp_path / "n.yaml"
    bad.write_text("output: out/{date}\nschedule: daily\njobs: [{kind: images, name: a, prompts: p.jsonl}]\n")
    r, _, err = invoke(["submit", "nightly", "--config", str(bad), "--address", "http://127.0.0.1:1"])
    assert r.exit_code == 2 and "'schedule': unknown key" in err


# ---- against the real head ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_auth_required_and_wrong_token_are_clear(head, monkeypatch):
    # A fresh process with a HOME of its own: Ray caches a token per process and the machine's user may have
    # ~/.ray/auth_token from another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(head.workdir)}
    exe = Path(sys.executable).with_name("dynagen")
    p = subprocess.run([str(exe), "jobs", "list", "--address", head.address], env=env, capture_output=True,
                       text=True, timeout=120)
    # Without a token the head answers 401 ("requires"); Ray's client may still find a machine-wide token from
    # another cluster ("rejected"). Either way: exit 2 and one line that names the auth token.
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "requires an auth token" in errors[0] or "rejected the auth token" in errors[0], p.stderr
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    r, _, err = invoke(["jobs", "list", "--address", head.address])
    assert r.exit_code == 2 and "rejected the auth token" in err and "not-the-token" not in err


@pytest.mark.slow
def test_submitted_image_job_writes_to_s3(head, s3, tiny_model, tmp_path, token_env, monkeypatch):
    import boto3

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    cfg = tmp_path / "settings.yaml"
    cfg.write_text(f"storage:\n  endpoint_url: {s3.endpoint}\nimages:\n  cpus_per_actor: 0.5\n")
    # Credentials as settings (env vars on the client); they must reach the job only through runtime_env.
    monkeypatch.setenv("DYNAGEN_STORAGE__ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("DYNAGEN_STORAGE__SECRET_ACCESS_KEY", s3.secret_key)
    dest = f"s3://{s3.bucket}/submitted"
    r, out, err = invoke(["submit", "images", "--prompts", str(prompts), "--out", dest, "--steps", "2",
                          "--model", tiny_model, "--batch-size", "2", "--config", str(cfg),
                          "--address", head.address, "--wait"])
    job_id = out.splitlines()[0].strip()
    assert r.exit_code == 0, out + err
    assert job_id.startswith("raysubmit_") and "SUCCEEDED" in err
    assert s3.secret_key not in out + err and TOKEN not in out + err

    c = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3.bucket, Prefix="submitted/")["Contents"]]
    images = sorted(k for k in keys if k.startswith("submitted/images/"))
    assert images == [f"submitted/images/p{i}.png" for i in range(4)]
    assert any(k.startswith("submitted/metadata/") and k.endswith(".parquet") for k in keys)

    # The job is visible and its entrypoint (shown by the dashboard) holds no secret.
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {TOKEN}"}).get_job_info(job_id)
    assert s3.secret_key not in info.entrypoint and s3.access_key not in info.entrypoint
    r, out, _ = invoke(["jobs", "list", "--address", head.address])
    assert r.exit_code == 0 and job_id in out and "images" in out and "SUCCEEDED" in out
    r, out, _ = invoke(["jobs", "status", job_id, "--address", head.address])
    assert r.exit_code == 0 and "SUCCEEDED" in out
    r, out, _ = invoke(["jobs", "logs", job_id, "--address", head.address])
    assert "4 ok" in out and s3.secret_key not in out


@pytest.mark.slow
def test_failed_remote_job_shows_traceback(head, token_env):
    from ray.job_submission import JobSubmissionClient

    # Any job that crashes: the CLI must show the remote traceback as it is.
    client = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {TOKEN}"})
    job_id = client.submit_job(entrypoint=entrypoint_c("def deep():\n    return 1 / 0\n\ndeep()\n"))
    r, out, err = invoke(["jobs", "logs", job_id, "--follow", "--address", head.address])
    assert r.exit_code == 1 and "FAILED" in err
    assert "Traceback (most recent call last)" in out and "ZeroDivisionError" in out
    r, out, _ = invoke(["jobs", "logs", job_id, "--address", head.address])
    assert "Traceback (most recent call last)" in out and "in deep" in out
    r, out, _ = invoke(["jobs", "status", job_id, "--address", head.address])
    assert r.exit_code == 1 and "FAILED" in out
    r, out, _ = invoke(["jobs", "stop", job_id, "--address", head.address])
    assert r.exit_code == 0 and "already FAILED" in out
    r, _, err = invoke(["jobs", "status", "raysubmit_nope", "--address", head.address])
    assert r.exit_code == 2 and "no job 'raysubmit_nope'" in err


@pytest.mark.slow
def test_s3_settings_from_the_shell_reach_the_job(head, s3, tiny_model, tmp_path, token_env, monkeypatch):
    """The README's cluster example: AWS_* exported in the shell (the s3 fixture does), no --env, no settings: the
    job gets credentials, endpoint and region through runtime_env and never prints them."""
    import boto3

    for name in [k for k in os.environ if k.startswith("DYNAGEN_STORAGE__")]:
        monkeypatch.delenv(name)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2])))
    c = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key)
    c.put_object(Bucket=s3.bucket, Key="in/prompts.jsonl", Body=prompts.read_bytes())
    r, out, err = invoke(["submit", "images", "--prompts", f"s3://{s3.bucket}/in/", "--out", f"s3://{s3.bucket}/shell",
                          "--steps", "2", "--model", tiny_model, "--batch-size", "2", "--address", head.address,
                          "--wait"])
    assert r.exit_code == 0, out + err
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3.bucket, Prefix="shell/images/")["Contents"]]
    assert sorted(keys) == ["shell/images/q0.png", "shell/images/q1.png"]
    assert s3.secret_key not in out + err and s3.access_key not in out + err


@pytest.mark.slow
def test_missing_credentials_or_a_python_without_dynagen_fail_in_one_line(head, s3, tiny_model, tmp_path, token_env,
                                                                            monkeypatch):
    for name in [k for k in os.environ if k.startswith(("DYNAGEN_STORAGE__", "AWS_ACCESS_KEY", "AWS_SECRET"))]:
        monkeypatch.delenv(name)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "z", "prompt": "a red circle"}) + "\n")
    base = ["submit", "images", "--prompts", str(prompts), "--steps", "2", "--model", tiny_model,
            "--address", head.address, "--wait"]
    r, out, err = invoke(base + ["--out", f"s3://{s3.bucket}/nocreds"])
    assert r.exit_code == 1 and "FAILED" in err, out + err
    assert "error: no S3 credentials for s3://" in out and "AWS_ACCESS_KEY_ID" in out and "Traceback" not in out

    bare = tmp_path / "bare"  # an interpreter without dynagen's dependencies, as a head started outside the venv has
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    r, out, err = invoke(base + ["--out", str(tmp_path / "o"), "--python", str(bare / "bin" / "python")])
    assert r.exit_code == 1 and "FAILED" in err, out + err
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "cannot run dynagen: missing" in errors[0] and "Traceback" not in out, out


def test_payload_leaves_the_serve_key_out(tmp_path):
    root = Path(__file__).resolve().parents[4]
    settings, _ = load_settings(None, {"images.steps": 2}, env={"DYNAGEN_SERVE__API_KEY": "serve-key-0123456789abcdef"})
    payload, env = job_payload(settings, root)
    assert "serve" not in json.loads(payload) and "serve-key" not in payload and "****" not in payload
