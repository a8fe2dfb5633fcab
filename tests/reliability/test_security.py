"""Credentials never reach outputs or messages; object keys come only from validated ids."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dynagen.app.cli import app
from dynagen.core.storage import Storage


def test_secrets_absent_from_every_output(ray_local, tiny_model, s3, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage:\n  access_key_id: {s3.access_key}\n  secret_access_key: {s3.secret_key}\n")
    src = tmp_path / "p.jsonl"
    rows = [{"prompt": "a red circle", "id": "ok-1"}, {"prompt": "", "id": "bad-1"},
            {"prompt": "x", "id": "../../escape"}, {"prompt": "y", "id": "%2e%2e%2fkey"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dest = f"s3://{s3.bucket}/secrets-check"
    r = CliRunner().invoke(app, ["run", "images", "--prompts", str(src), "--out", dest, "--steps", "2",
                                 "--model", tiny_model, "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(cfg)]).output
    store = Storage(dest)
    keys = store.list("")
    assert keys and all(k.split("/")[0] in ("images", "metadata", "runs") for k in keys)
    # Only the valid id became an object key; the hostile ids were recorded as failed rows.
    assert [k for k in keys if k.startswith("images/")] == ["images/ok-1.png"]
    blobs = [store.get_bytes(k) for k in keys] + [r.output.encode(), shown.encode()]
    for secret in (s3.secret_key, s3.access_key):
        assert not any(secret.encode() in b for b in blobs), f"secret leaked into an output"
