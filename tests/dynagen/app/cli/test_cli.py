import json

from typer.testing import CliRunner

from dynagen.app.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "run" in r.output and "config" in r.output
    r = runner.invoke(app, ["run", "images", "--help"])
    assert r.exit_code == 0 and "--prompts" in r.output and "resumes" in r.output


def test_config_show_sources_and_masks_secrets(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("images:\n  batch_size: 3\n")
    monkeypatch.setenv("DYNAGEN_STORAGE__SECRET_ACCESS_KEY", "topsecret-value")
    r = runner.invoke(app, ["config", "show", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "images.batch_size" in ln)
    assert "3" in line and "file" in line
    assert "topsecret-value" not in r.output and "********" in r.output


def test_bad_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("images:\n  colour: red\n")
    r = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert r.exit_code == 2 and "unknown setting 'images.colour'" in r.output


def test_run_images_then_bad_shard(ray_local, tiny_model, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": f"a red circle {i}", "id": f"c{i}"}) for i in range(3)) + "\n")
    out = tmp_path / "out"
    args = ["run", "images", "--prompts", str(src), "--out", str(out), "--steps", "2", "--model", tiny_model]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 ok" in r.output and sorted(p.name for p in (out / "images").iterdir()) == ["c0.png", "c1.png", "c2.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nno prompt column\n")
    r = runner.invoke(app, ["run", "images", "--prompts", str(bad), "--out", str(out), "--steps", "2", "--model", tiny_model])
    assert r.exit_code == 2 and "missing required column 'prompt'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", "images", "--prompts", str(src), "--out", str(out), "--steps", "0"])
    assert r.exit_code == 2 and "images.steps" in r.output


def _dest_with(tmp_path, ids):
    """A destination as the image sink writes it, holding ok rows for ``ids`` (no Ray: the sink called directly)."""
    import io

    from PIL import Image

    from dynagen.core.records import RunSummary
    from dynagen.core.storage import Storage
    from pipelines.sinks import ImageSink

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    n = len(ids)
    store = Storage(str(tmp_path / "dest"))
    sink = ImageSink(store, RunSummary(run_id="r1", source="s", dest=store.root, started_at=""), batch_size=4)
    sink.write_rows({"id": ids, "prompt": ["p"] * n, "negative_prompt": [""] * n, "seed": [1] * n, "steps": [4] * n,
                     "status": ["ok"] * n, "error": [""] * n, "image": [buf.getvalue()] * n, "unet_evals": [8] * n,
                     "batch_id": ["b"] * n, "batch_size": [n] * n, "source": ["s"] * n})
    return store.root


def test_audit_refuses_a_missing_or_empty_destination(tmp_path):
    for path in (tmp_path / "nope", tmp_path):  # does not exist; exists but holds no run's output
        r = runner.invoke(app, ["audit", str(path)])
        assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output


def test_audit_checks_every_input_id_once(tmp_path):
    dest = _dest_with(tmp_path, ["a", "b"])
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": "a red circle"}) + "\n" for i in ("a", "b")))
    r = runner.invoke(app, ["audit", dest, "--prompts", str(src)])
    assert r.exit_code == 0 and "missing from DEST 0" in r.output, r.output
    src.write_text(src.read_text() + json.dumps({"id": "c", "prompt": "a blue square"}) + "\n")
    r = runner.invoke(app, ["audit", dest, "--prompts", str(src)])
    assert r.exit_code == 1 and "missing from DEST 1" in r.output and "missing from DEST: c" in r.output, r.output
    r = runner.invoke(app, ["audit", dest, "--prompts", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "no prompt shards" in r.output


def test_config_show_effective_storage_values_uncut_when_piped(monkeypatch):
    long = "http://127.0.0.1:8333/" + "a-long-path-segment/" * 6
    monkeypatch.setenv("AWS_ENDPOINT_URL", long)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    r = runner.invoke(app, ["config", "show"])  # CliRunner's stdout is not a terminal: the piped form
    assert r.exit_code == 0, r.output
    rows = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in r.output.splitlines()}
    assert rows["storage.endpoint_url"] == [long, "env AWS_ENDPOINT_URL"]
    assert rows["storage.region"] == ["eu-west-3", "env AWS_REGION"]
    assert rows["storage.secret_access_key"] == ["********", "env AWS_SECRET_ACCESS_KEY"]
    assert "env-secret-value" not in r.output


def test_precision_flags_set_their_settings(tmp_path):
    """--dtype, --compile, --vae-slicing and --vae-tiling are job flags (run and submit share them) setting the images
    section; --scheduler takes 'auto' and 'flow-euler'."""
    from dynagen.app.cli.options import IMAGE_FLAGS
    from dynagen.core.settings import load_settings

    keys = {f.key for f in IMAGE_FLAGS}
    assert {"images.dtype", "images.compile", "images.vae_slicing", "images.vae_tiling"} <= keys
    r = runner.invoke(app, ["run", "images", "--help"], env={"COLUMNS": "200"})
    assert all(f in r.output for f in ("--dtype", "--compile", "--vae-slicing", "--vae-tiling", "flow-euler"))
    s = load_settings(None, {}, env={})[0].images
    assert (s.dtype, s.compile, s.vae_slicing, s.vae_tiling, s.scheduler) == ("auto", False, False, False, "auto")
    r = runner.invoke(app, ["run", "images", "--prompts", "x", "--out", str(tmp_path), "--dtype", "float8"])
    assert r.exit_code == 2 and "float8" in r.output
