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
