import pytest

from dynagen.core.settings import SettingsError, describe, load_settings, settings_from_json


def test_layers_and_sources(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("images:\n  batch_size: 4\n  scheduler: euler\nstorage:\n  secret_access_key: hunter2\n")
    s, src = load_settings(cfg, {"images.scheduler": "dpm++"}, env={"DYNAGEN_IMAGES__BATCH_SIZE": "16"})
    assert s.images.batch_size == 16 and src["images.batch_size"] == "env"
    assert s.images.scheduler == "dpm++" and src["images.scheduler"] == "flag"
    assert src["images.group_window"] == "default"
    rows = {k: (v, so) for k, v, so in describe(s, src)}
    assert rows["storage.secret_access_key"] == ("********", "file")
    assert "hunter2" not in repr(s) and "hunter2" not in str(rows)


@pytest.mark.parametrize(
    "text, overrides, env, needle",
    [
        ("images:\n  batchsize: 4\n", {}, {}, "unknown setting 'images.batchsize'"),
        ("images: [1, 2\n", {}, {}, "not valid YAML"),
        ("", {"images.steps": "0"}, {}, "images.steps"),
        ("", {"images.steps": "many"}, {}, "images.steps"),
        ("", {}, {"DYNAGEN_IMAGES__NOPE": "1"}, "DYNAGEN_IMAGES__NOPE"),
        ("", {}, {"DYNAGEN_IMAGES__BATCH_SIZE": "0"}, "images.batch_size"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, overrides, env, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as e:
        load_settings(cfg, overrides, env=env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_steps_parse(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    s, _ = load_settings(None, {"images.steps": "25"}, env={})
    assert s.images.steps == 25
    assert settings_from_json(s.model_dump_json()).images.steps == 25


def test_models_dir_defaults_to_the_checkout_and_rebases_unset_model_settings(tmp_path):
    from pathlib import Path

    from dynagen.core.settings import EMBEDDED_MODELS, default_models_dir

    checkout_models = Path(__file__).resolve().parents[3] / "models"
    s, src = load_settings(env={})
    assert default_models_dir() == (checkout_models, "checkout")
    rows = {k: (v, so) for k, v, so in describe(s, src)}
    assert rows["models_dir"] == (str(checkout_models), "default (checkout)")
    assert s.images.model == str(checkout_models / "tiny-sd") and Path(s.images.model).is_dir()

    # DYNAGEN_MODELS_DIR moves every model setting left unset; one set explicitly stays where it was put.
    s, src = load_settings(overrides={"llm.small_model": "my/small"}, env={"DYNAGEN_MODELS_DIR": str(tmp_path)})
    assert src["models_dir"] == "env" and s.models_dir == str(tmp_path)
    for section, key, name in EMBEDDED_MODELS:
        want = "my/small" if key == "small_model" else str(tmp_path / name)
        assert getattr(getattr(s, section), key) == want
    # Resolved defaults stay defaults: what `dynagen submit` sends (set values only) lets the cluster resolve them.
    assert s.model_dump(exclude_unset=True) == {"models_dir": str(tmp_path), "llm": {"small_model": "my/small"}}
    assert settings_from_json(s.model_dump_json()).images.model == str(tmp_path / "tiny-sd")


def test_a_bad_union_value_names_the_setting_its_source_and_what_would_do():
    with pytest.raises(SettingsError) as e:
        load_settings(None, {"images.steps": "abc"}, env={})
    msg = str(e.value)
    assert msg.startswith("setting 'images.steps' (flag): ") and "literal" not in msg
    assert "'auto'" in msg and "integer" in msg
    with pytest.raises(SettingsError, match=r"^setting 'images.steps' \(env\): Input should be 'auto' or "):
        load_settings(None, {}, env={"DYNAGEN_IMAGES__STEPS": "abc"})


def test_serve_batching_auto_is_continuous_where_the_model_family_runs_it():
    """Serve's image batching is its own setting (the batch job keeps images.batching); auto resolves once."""
    s, _ = load_settings(env={})
    assert s.serve.batching == "auto" and s.images.batching == "grouped"
    assert s.serve_image_batching() == "continuous"
    for per_sample in ("early_stop", "adaptive"):  # both run under continuous batching
        assert load_settings(overrides={f"images.{per_sample}": True}, env={})[0].serve_image_batching() == "continuous"
    assert load_settings(overrides={"serve.batching": "grouped"}, env={})[0].serve_image_batching() == "grouped"
    assert s.serve_image_batching(model_runs_continuous=False) == "grouped"  # e.g. an SDXL or FLUX folder
    assert load_settings(overrides={"images.batching": "continuous", "images.early_stop": True}, env={})[0]
    with pytest.raises(SettingsError, match="two per-sample rules"):
        load_settings(overrides={"images.adaptive": True, "images.early_stop": True}, env={})
