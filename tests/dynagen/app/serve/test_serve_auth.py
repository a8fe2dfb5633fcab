"""Who may call the online app: a bearer token (serve.api_key) on every route but /healthz, 401 with a one-line
reason otherwise; the key never shows in responses, logs or ``config show``."""

from pathlib import Path

import pytest
import requests

from dynagen.app.devservers import free_port
from dynagen.app.serve.api import auth_problem, key_digest
from dynagen.core.settings import SettingsError, describe, load_settings

KEY = "k3y-" + "0123456789abcdef" * 2  # what an operator would put in the Secret


def test_auth_problem_cases():
    d = key_digest(KEY)
    assert auth_problem(f"Bearer {KEY}", d) is None
    assert auth_problem(f"bearer   {KEY} ", d) is None  # scheme is case-insensitive, spaces trimmed
    assert auth_problem(None, d).startswith("missing bearer token")
    assert auth_problem("", d).startswith("missing bearer token")
    assert auth_problem(f"Basic {KEY}", d).startswith("malformed Authorization header")
    assert auth_problem("Bearer ", d).startswith("malformed Authorization header")
    assert auth_problem("Bearer " + KEY[:-1] + "x", d) == "invalid bearer token"
    for reason in (auth_problem("Bearer wrong-token-wrong-token", d), auth_problem(f"Token {KEY}", d)):
        assert KEY not in reason and "wrong-token" not in reason and "\n" not in reason


@pytest.mark.parametrize("host,on_loopback,required", [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("127.0.0.1", True, True), ("0.0.0.0", False, True), ("10.1.2.3", False, True), ("my-host", False, True),
])
def test_token_required_off_loopback(host, on_loopback, required):
    s, _ = load_settings(overrides={"serve.host": host, "serve.api_key_on_loopback": on_loopback}, env={})
    assert s.serve.auth_required() is required


def test_key_from_env_is_masked_and_checked():
    s, src = load_settings(env={"DYNAGEN_SERVE__API_KEY": KEY})
    assert s.serve.api_key.get_secret_value() == KEY and src["serve.api_key"] == "env"
    rows = {k: (v, where) for k, v, where in describe(s, src)}
    assert rows["serve.api_key"] == ("********", "env")
    assert KEY not in repr(s) and KEY not in str(describe(s, src))
    with pytest.raises(SettingsError, match="serve.api_key.*16 characters"):
        load_settings(env={"DYNAGEN_SERVE__API_KEY": "short"})


def test_config_show_masks_the_key():
    from typer.testing import CliRunner

    from dynagen.app.cli import app as cli

    r = CliRunner().invoke(cli, ["config", "show"], env={"DYNAGEN_SERVE__API_KEY": KEY, "COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "serve.api_key" in r.output and KEY not in r.output


def test_cli_serve_refuses_an_open_non_loopback_bind():
    from typer.testing import CliRunner

    from dynagen.app.cli import app as cli

    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"], env={"DYNAGEN_SERVE__API_KEY": ""})
    assert r.exit_code == 2 and "serve.api_key" in r.output and "not loopback" in r.output


def test_build_app_refuses_an_open_non_loopback_bind_and_never_binds_the_key():
    from dynagen.app.serve.deployments import AuthConfigError, build_app

    s, _ = load_settings(overrides={"serve.host": "0.0.0.0"}, env={})
    with pytest.raises(AuthConfigError, match="not loopback"):
        build_app(s)
    s, _ = load_settings(overrides={"serve.host": "0.0.0.0"}, env={"DYNAGEN_SERVE__API_KEY": KEY})
    app = build_app(s)
    args = repr(app._bound_deployment.init_args)  # what Serve stores and shows: digest, never the key
    assert KEY not in args and '"api_key":' not in args


@pytest.fixture(scope="module")
def secured(ray_local, tiny_model, tmp_path_factory):
    """The app on loopback with the token required (api_key_on_loopback): the same code path as 0.0.0.0."""
    from ray import serve

    from dynagen.app.serve.deployments import start

    settings, _ = load_settings(overrides={
        "images.model": tiny_model, "images.stepsaver": str(tmp_path_factory.mktemp("none") / "absent"),
        "llm.router": "random", "serve.port": free_port(), "serve.app_name": "dynagen-auth-test",
        "serve.api_key_on_loopback": True, "serve.ingress_num_cpus": 0.25, "serve.images_num_cpus": 0.5,
        "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1, "serve.max_steps": 4,
    }, env={"DYNAGEN_SERVE__API_KEY": KEY})
    url = start(settings)
    yield url
    serve.shutdown()


def test_wrong_missing_and_right_token(secured):
    url = secured
    body = {"prompt": "a red circle", "seed": 1, "steps": 2}
    seen = []
    for headers, reason in (({}, "missing bearer token"), ({"Authorization": "Bearer nope-nope-nope-nope"},
                            "invalid bearer token"), ({"Authorization": KEY}, "malformed Authorization header")):
        for path in ("/v1/images", "/v1/steps", "/v1/route", "/docs"):
            r = requests.post(url + path, json=body, headers=headers, timeout=60) if path != "/docs" else \
                requests.get(url + path, headers=headers, timeout=60)
            assert r.status_code == 401, (path, r.status_code)
            assert r.json()["detail"].startswith(reason) and r.headers["WWW-Authenticate"] == "Bearer"
            seen.append(r.text)
    ok = requests.post(url + "/v1/images", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    # Past the check, the route answers as usual (here: no StepSaver → 503, not 401).
    assert requests.post(url + "/v1/steps", json={"prompts": ["x"]}, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=60).status_code == 503
    health = requests.get(url + "/healthz", timeout=60)  # probes need no secret
    assert health.status_code == 200
    assert all(KEY not in t for t in [*seen, ok.headers.__repr__(), health.text])


def test_the_key_never_reaches_the_logs(secured, ray_local):
    import ray

    requests.post(secured + "/v1/route", json={"prompts": ["2+2?"]}, headers={"Authorization": f"Bearer {KEY}"},
                  timeout=60)
    requests.post(secured + "/v1/route", json={"prompts": ["2+2?"]}, headers={"Authorization": f"Bearer {KEY}x"},
                  timeout=60)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [p for p in (session / "logs").rglob("*") if p.is_file()]
    assert any("serve" in str(p) for p in logs)  # Serve's access logs are there to search
    for p in logs:
        assert KEY.encode() not in p.read_bytes(), p.name


def test_run_records_leave_the_key_out():
    import json

    from pipelines.common import settings_record

    s, _ = load_settings(env={"DYNAGEN_SERVE__API_KEY": KEY})
    record = settings_record(s)
    assert "api_key" not in record["serve"] and KEY not in json.dumps(record) and "****" not in json.dumps(record)
