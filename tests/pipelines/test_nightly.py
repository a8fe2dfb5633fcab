"""Nightly batches: the schema (bad input → one line), the night's bookkeeping (pure, injected runners), and one real
night on local Ray with the tiny random model: run half, rerun to complete, rerun to do nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dynagen.app.cli import app
from pipelines.nightly import NightlyError, load_nightly, parse_date, parse_spec, run_night
from dynagen.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
NIGHT = date(2026, 1, 2)


def spec_dict(tmp_path: Path, **over) -> dict:
    d = {
        "name": "t",
        "output": str(tmp_path / "out" / "{date}"),
        "jobs": [{"kind": "images", "name": "pics", "prompts": str(tmp_path / "in" / "{date}.jsonl"), "steps": 2}],
    }
    d.update(over)
    return d


def write_prompts(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"n{i}", "prompt": f"shape number {i}"}) + "\n" for i in range(n)))


# ---- schema and bad input ----------------------------------------------------------------------------------------


def test_example_nightly_file_is_valid():
    spec = load_nightly(REPO / "examples" / "nightly.yaml")
    assert {j.kind for j in spec.jobs} == {"images", "llm"} and "{date}" in spec.output
    assert spec.output_for(NIGHT).endswith("2026-01-02")


@pytest.mark.parametrize("change,expect", [
    (lambda d: d.update(schedule="daily"), "'schedule': unknown key"),
    (lambda d: d["jobs"][0].update(promts="x"), "'jobs.0.promts': unknown key"),
    (lambda d: d["jobs"][0].pop("prompts"), "'jobs.0.prompts': required key missing"),
    (lambda d: d["jobs"][0].update(kind="video"), "jobs.0"),
    (lambda d: d["jobs"][0].update(steps=0), "steps must be 'auto' or an integer"),
    (lambda d: d.update(output="out/fixed"), "output must contain {date}"),
    (lambda d: d.update(output="out/{day}"), "unknown placeholder '{day}'"),
    (lambda d: d["jobs"].append(dict(d["jobs"][0])), "two jobs are named 'pics'"),
    (lambda d: d.update(settings={"storage": {"secret_access_key": "x"}}), "credentials do not belong"),
    (lambda d: d.update(limits={"max_failed_share": 2}), "'limits.max_failed_share'"),
])
def test_bad_nightly_file_is_one_clear_line(tmp_path, change, expect):
    d = spec_dict(tmp_path)
    change(d)
    f = tmp_path / "n.yaml"
    f.write_text(yaml.safe_dump(d))
    r = runner.invoke(app, ["nightly", "--config", str(f), "--date", "2026-01-02"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_bad_date_missing_file_and_missing_source(tmp_path):
    with pytest.raises(NightlyError, match="bad date '2026-02-30'"):
        parse_date("2026-02-30")
    with pytest.raises(NightlyError, match="expected YYYY-MM-DD"):
        parse_date("02/01/2026")
    r = runner.invoke(app, ["nightly", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "nightly file not found" in r.stderr
    f = tmp_path / "n.yaml"
    f.write_text(yaml.safe_dump(spec_dict(tmp_path)))
    r = runner.invoke(app, ["nightly", "--config", str(f), "--date", "2026-01-02", "--check"])
    assert r.exit_code == 2 and "job 'pics': prompt source" in r.stderr and "2026-01-02.jsonl" in r.stderr
    write_prompts(tmp_path / "in" / "2026-01-02.jsonl", 2)
    r = runner.invoke(app, ["nightly", "--config", str(f), "--date", "2026-01-02", "--check"])
    assert r.exit_code == 0 and "ok (1 jobs" in r.stdout


def test_job_settings_layering_and_limits(tmp_path):
    from pipelines.nightly import job_settings

    d = spec_dict(tmp_path, settings={"images": {"batch_size": 3, "limit": 50}},
                  limits={"max_prompts_per_job": 10})
    d["jobs"][0]["settings"] = {"images": {"batch_size": 5}}
    spec = parse_spec(d)
    s = job_settings(spec, spec.jobs[0], Settings())
    assert (s.images.batch_size, s.images.steps, s.images.limit) == (5, 2, 10)
    d["jobs"][0]["settings"] = {"images": {"colour": "red"}}
    with pytest.raises(NightlyError, match=r"job 'pics' settings: 'images.colour': unknown key"):
        job_settings(parse_spec(d), parse_spec(d).jobs[0], Settings())


# ---- the night's bookkeeping, with stand-in runners (no Ray) -------------------------------------------------------


@dataclass
class FakeSummary:
    ok: int
    failed: int
    skipped: int = 0
    run_id: str = "r1"
    dest_ok: int = 0  # 0 + 0: the night falls back to this attempt's counts
    dest_failed: int = 0


def test_failed_jobs_make_a_failed_night_with_a_summary(tmp_path):
    d = spec_dict(tmp_path, limits={"max_failed_share": 0.25})
    d["jobs"] += [{"kind": "images", "name": "crashy", "prompts": str(tmp_path / "in" / "{date}.jsonl")},
                  {"kind": "llm", "name": "text", "prompts": str(tmp_path / "in" / "{date}.jsonl")},
                  {"kind": "images", "name": "badrows", "prompts": str(tmp_path / "in" / "{date}.jsonl")}]
    write_prompts(tmp_path / "in" / "2026-01-02.jsonl", 2)
    seen = []

    def images(settings, src, dest):
        seen.append(dest.rsplit("/", 1)[-1])
        if dest.endswith("crashy"):
            raise RuntimeError("model exploded\nlong traceback text")
        return FakeSummary(ok=1, failed=3) if dest.endswith("badrows") else FakeSummary(ok=4, failed=1)

    result = run_night(parse_spec(d), NIGHT, runners={"images": images, "llm": lambda s, a, b: FakeSummary(2, 0)},
                       log=lambda m: None)
    assert seen == ["pics", "crashy", "badrows"]  # a failed job does not stop the night
    assert [j.status for j in result.jobs] == ["ok", "failed", "ok", "failed"] and not result.ok
    lines = result.lines()
    assert "RuntimeError: model exploded" in lines[1] and "long traceback" not in lines[1]
    assert "3 of 4 rows in the destination failed" in lines[3]
    assert lines[-1] == "night 2026-01-02 of 't': FAILED (2 of 4 jobs: crashy, badrows)"
    record = json.loads((tmp_path / "out" / "2026-01-02" / "nightly.json").read_text())
    assert record["ok"] is False and [j["status"] for j in record["jobs"]] == ["ok", "failed", "ok", "failed"]

    d["limits"]["stop_on_failure"] = True
    result = run_night(parse_spec(d), NIGHT, runners={"images": images, "llm": lambda s, a, b: FakeSummary(2, 0)},
                       log=lambda m: None)
    assert [j.status for j in result.jobs] == ["ok", "failed", "skipped", "skipped"]


def test_a_rerun_that_skips_everything_keeps_a_failed_night_failed(tmp_path):
    """The failed share is the destination's (every attempt counted), not this attempt's: a rerun with nothing left
    to do must not turn the night green, and rows a retry fixed stop counting against it."""
    d = spec_dict(tmp_path, limits={"max_failed_share": 0.25})
    write_prompts(tmp_path / "in" / "2026-01-02.jsonl", 2)
    rerun = lambda s, a, b: FakeSummary(ok=0, failed=0, skipped=4, dest_ok=1, dest_failed=3)  # noqa: E731
    result = run_night(parse_spec(d), NIGHT, runners={"images": rerun}, log=lambda m: None)
    assert [j.status for j in result.jobs] == ["failed"] and "3 of 4 rows in the destination" in result.jobs[0].error
    fixed = lambda s, a, b: FakeSummary(ok=3, failed=0, skipped=1, dest_ok=4, dest_failed=0)  # noqa: E731
    assert run_night(parse_spec(d), NIGHT, runners={"images": fixed}, log=lambda m: None).ok


# ---- a real night (local Ray, tiny random model) ----------------------------------------------------------------


@pytest.mark.slow
def test_real_night_resumes_and_is_idempotent(ray_local, tiny_model, tmp_path):
    write_prompts(tmp_path / "in" / "2026-01-02.jsonl", 4)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"images:\n  model: {tiny_model}\n  batch_size: 2\n  cpus_per_actor: 0.5\n")

    def night(limit: int | None):
        d = spec_dict(tmp_path)
        if limit:
            d["limits"] = {"max_prompts_per_job": limit}
        f = tmp_path / "n.yaml"
        f.write_text(yaml.safe_dump(d))
        return runner.invoke(app, ["nightly", "--config", str(f), "--date", "2026-01-02", "--settings", str(settings)])

    out = tmp_path / "out" / "2026-01-02" / "pics"
    r = night(limit=2)  # a night cut short: half of the prompts done
    assert r.exit_code == 0, r.stderr
    assert len(list((out / "images").glob("*.png"))) == 2
    r = night(limit=None)  # rerun completes it without redoing the first half
    assert r.exit_code == 0, r.stderr
    assert "(2 ok, 0 failed, 2 done earlier)" in r.stderr and "all jobs ok" in r.stderr
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [f"n{i}.png" for i in range(4)]
    r = night(limit=None)  # a finished night: nothing to do
    assert r.exit_code == 0 and "(0 ok, 0 failed, 4 done earlier)" in r.stderr
    record = json.loads((tmp_path / "out" / "2026-01-02" / "nightly.json").read_text())
    assert record["ok"] is True and record["jobs"][0]["skipped"] == 4


def test_job_entry_parses_what_submit_sends(tmp_path, capsys):
    """``dynagen submit nightly`` runs ``python -m jobs.nightly --spec-json ... --settings-json ... --date ...``."""
    from jobs.nightly import main

    spec = parse_spec(spec_dict(tmp_path))
    args = ["--spec-json", spec.model_dump_json(), "--settings-json", '{"ray":{"address":"auto"}}']
    assert main(args + ["--date", "2026-01-02"]) == 2  # the source for that night does not exist: nothing run
    assert "job 'pics': prompt source" in capsys.readouterr().err
    assert main(args + ["--date", "2026-1-2"]) == 2
    assert "bad date" in capsys.readouterr().err
    assert main(["--spec-json", '{"output": "x/{date}"}']) == 2
    assert "'jobs': required key missing" in capsys.readouterr().err
