import numpy as np
import pytest
import torch

from actors.diffusion import DiffusionCore
from actors.early_stop import (
    EarlyStopConfig,
    EarlyStopError,
    EarlyStopSampler,
    convergence_rate,
    first_stop,
)

PROMPTS = ["a red circle on a white background", "two small blue squares", "a green star on the left"]
SEEDS = [11, 12, 13]
GUIDANCE = 3.0
STEPS = 8


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def plain(tiny_model):
    return DiffusionCore(tiny_model, "ddim", guidance_scale=GUIDANCE, batch_size=4, num_threads=1)


@pytest.fixture(scope="module")
def sampler(plain):
    return EarlyStopSampler(plain.pipe, EarlyStopConfig(threshold=0.0, interval=2, min_steps=2))


def _rates(sampler, steps=STEPS):
    """Per sample: the (step, rate) checks of a run with stopping off."""
    checks = [[] for _ in PROMPTS]

    def keep(tr):
        for r, j in enumerate(tr.rows):
            checks[j].append((tr.step, float(tr.rate[r])))

    sampler(PROMPTS, _gens(SEEDS), steps, GUIDANCE, on_check=keep)
    return checks


def _with_threshold(sampler, threshold, **kw):
    cfg = EarlyStopConfig(threshold=threshold, interval=kw.get("interval", 2), min_steps=kw.get("min_steps", 2))
    return EarlyStopSampler(sampler.pipe, cfg)


# Pure helpers -------------------------------------------------------------------------------------------------


def test_convergence_rate_is_relative_change_per_unit_time():
    a, b = torch.ones(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    b[1] *= 1.1
    r = convergence_rate(a, b, t_prev=600, t_now=500, num_train_timesteps=1000)
    assert r[0] == 0 and r[1] == pytest.approx((0.1 / 1.1) / 0.1, rel=1e-5)


def test_first_stop_rule():
    checks = [(2, float("nan")), (4, 0.3), (6, 0.05), (8, 0.01)]
    assert first_stop(checks, 0.1, min_steps=2) == 6
    assert first_stop(checks, 0.1, min_steps=8) == 8
    assert first_stop(checks, 0.5, min_steps=1) == 4  # NaN never passes
    assert first_stop(checks, 0.0, min_steps=1) is None


def test_config_rejects_nonsense():
    with pytest.raises(EarlyStopError):
        EarlyStopConfig(threshold=-1)
    with pytest.raises(EarlyStopError):
        EarlyStopConfig(interval=0)


# The loop ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_threshold_zero_reproduces_the_plain_pipeline(tiny_model, scheduler):
    plain = DiffusionCore(tiny_model, scheduler, guidance_scale=GUIDANCE, num_threads=1)
    es = DiffusionCore(tiny_model, scheduler, guidance_scale=GUIDANCE, num_threads=1, early_stop=True,
                       early_stop_threshold=0.0)
    want = plain.generate(PROMPTS, SEEDS, STEPS)
    got, steps_run, stopped = es.generate_with_steps(PROMPTS, SEEDS, STEPS)
    np.testing.assert_array_equal(got, want)
    assert steps_run == [STEPS] * 3 and stopped == [False] * 3
    assert es.counter.evals == plain.counter.evals == 2 * STEPS * 3


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_converged_sample_leaves_and_others_are_unchanged(tiny_model, scheduler):
    core = DiffusionCore(tiny_model, scheduler, guidance_scale=GUIDANCE, num_threads=1)
    base = EarlyStopSampler(core.pipe, EarlyStopConfig(threshold=0.0, interval=2, min_steps=2))
    steps = 6  # with interval 2 the only comparable check is after step 4 (after step 6 the image is final)
    checks = _rates(base, steps)
    # A threshold between the samples' rates at that check: the lowest leaves there, the others run to the end.
    at4 = sorted(rates[1][1] for rates in checks)
    tau = (at4[0] + at4[1]) / 2
    es = _with_threshold(base, tau)
    out = es(PROMPTS, _gens(SEEDS), steps, GUIDANCE)
    left = [i for i, s in enumerate(out.stopped_early) if s]
    stayed = [i for i in range(3) if i not in left]
    assert len(left) == 1 and out.steps_run[left[0]] == 4 and all(out.steps_run[i] == steps for i in stayed)
    # The staying samples end exactly as without early stopping, and as when run alone.
    full = base(PROMPTS, _gens(SEEDS), steps, GUIDANCE)
    np.testing.assert_allclose(out.images[stayed], full.images[stayed], atol=1e-5)
    for i in stayed:
        alone = base([PROMPTS[i]], _gens([SEEDS[i]]), steps, GUIDANCE)
        np.testing.assert_allclose(out.images[i], alone.images[0], atol=1e-4)
    # A leaving sample's image is its x̂0 at the stop step, the same as when it runs alone.
    for i in left:
        alone = es([PROMPTS[i]], _gens([SEEDS[i]]), steps, GUIDANCE)
        assert alone.steps_run == [out.steps_run[i]]
        np.testing.assert_allclose(out.images[i], alone.images[0], atol=1e-4)


def test_unet_evals_equal_steps_run_times_cfg_and_stay_within_budget(plain, sampler):
    checks = _rates(sampler)
    tau = float(np.median([r for c in checks for _, r in c if not np.isnan(r)]))
    es = _with_threshold(sampler, tau)
    evals0 = plain.counter.evals
    out = es(PROMPTS, _gens(SEEDS), STEPS, GUIDANCE)
    assert plain.counter.evals - evals0 == out.unet_evals == 2 * sum(out.steps_run)
    assert all(1 <= s <= STEPS for s in out.steps_run) and any(out.stopped_early)
    # The replay rule (used by calibration) predicts the real stops.
    assert out.steps_run == [first_stop(c, tau, 2) or STEPS for c in checks]


def test_min_steps_holds_samples_back(sampler):
    es = _with_threshold(sampler, 1e9, min_steps=6)
    out = es(PROMPTS, _gens(SEEDS), STEPS, GUIDANCE)
    assert out.steps_run == [6, 6, 6] and all(out.stopped_early)


def test_run_records_steps_run_planned_and_stopped(tiny_model):
    core = DiffusionCore(tiny_model, "ddim", guidance_scale=GUIDANCE, batch_size=4, num_threads=1, early_stop=True,
                         early_stop_threshold=1e9, early_stop_interval=2, early_stop_min_steps=4)
    n = 3
    rows = {"id": ["a", "b", "c"], "prompt": PROMPTS, "negative_prompt": [""] * n, "seed": SEEDS,
            "steps": [8, 8, 3], "status": ["ok"] * n, "error": [""] * n}
    out = core.run(rows)
    assert out["planned_steps"] == [8, 8, 3]
    assert out["steps"] == [4, 4, 3] and out["stopped_early"] == [True, True, False]
    assert out["unet_evals"] == [8, 8, 6]


def test_unsupported_scheduler_is_refused(plain):
    from diffusers import PNDMScheduler, UniPCMultistepScheduler

    for cls in (UniPCMultistepScheduler, PNDMScheduler):
        pipe = plain.pipe
        old = pipe.scheduler
        pipe.scheduler = cls.from_config(old.config)
        try:
            with pytest.raises(EarlyStopError, match="run without --early-stop"):
                EarlyStopSampler(pipe)
        finally:
            pipe.scheduler = old


def test_default_threshold_matches_settings():
    from actors.early_stop import DEFAULT_INTERVAL, DEFAULT_MIN_STEPS, DEFAULT_THRESHOLD
    from dynagen.core.settings import ImageSettings

    s = ImageSettings()
    assert (s.early_stop_threshold, s.early_stop_interval, s.early_stop_min_steps) == (
        DEFAULT_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_MIN_STEPS)
    assert s.early_stop is False


def test_metadata_table_carries_steps_run_budget_and_stopped(tiny_model):
    from pipelines.sinks import metadata_table

    core = DiffusionCore(tiny_model, "ddim", guidance_scale=GUIDANCE, batch_size=4, num_threads=1, early_stop=True,
                         early_stop_threshold=1e9, early_stop_interval=2, early_stop_min_steps=2)
    rows = {"id": ["a", "b"], "prompt": PROMPTS[:2], "negative_prompt": ["", ""], "seed": SEEDS[:2], "steps": [6, 6],
            "status": ["ok", "failed"], "error": ["", "empty prompt"], "source": ["s", "s"]}
    table = metadata_table(core.run(rows), ["images/a.png", None], "run1").to_pydict()
    assert table["steps"] == [4, 6]  # the first check (step 2) has nothing to compare with
    assert table["planned_steps"] == [6, 6] and table["stopped_early"] == [True, False]


def test_cli_early_stop_flag_reaches_the_job_settings(monkeypatch, tmp_path):
    import jobs.run_images
    from typer.testing import CliRunner

    from dynagen.app.cli import app

    seen = {}
    monkeypatch.setattr(jobs.run_images, "run_and_report", lambda settings, *a, **k: seen.setdefault("s", settings) and 0)
    args = ["run", "images", "--prompts", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "20"]
    r = CliRunner().invoke(app, args + ["--early-stop"])
    assert r.exit_code == 0, r.output
    assert seen.pop("s").images.early_stop is True
    r = CliRunner().invoke(app, args + ["--no-early-stop"])
    assert r.exit_code == 0 and seen.pop("s").images.early_stop is False


# The learned signal ----------------------------------------------------------------------------------------------


def _toy_signal(level=0.5):
    """A signal that fires once 64% of the budget has run (weights on budget_share only)."""
    from actors.early_stop import LearnedSignal, SIGNAL_FEATURES

    w = [0.0] * len(SIGNAL_FEATURES)
    w[SIGNAL_FEATURES.index("budget_share")] = 50.0
    return LearnedSignal(tuple(w), -32.0, (0.0,) * 5, (1.0,) * 5, level)  # σ ≥ 0.5 from share 0.64


def test_signal_features_fill_a_missing_previous_rate_with_the_current_one():
    from actors.early_stop import SIGNAL_FEATURES, signal_features

    x = signal_features([4, 6], [10, 10], [600, 400], [0.5, 0.2], [np.nan, 0.5], 1000)
    assert x.shape == (2, len(SIGNAL_FEATURES))
    assert x[0, 0] == x[0, 1] == pytest.approx(np.log(0.5))  # no previous check: prev = current
    assert x[1, 1] == pytest.approx(np.log(0.5)) and x[1, 3] == pytest.approx(0.6) and x[0, 2] == pytest.approx(0.6)


def test_signal_load_errors_are_one_line(tmp_path):
    from actors.early_stop import LearnedSignal

    with pytest.raises(EarlyStopError, match="no learned early-stop signal"):
        LearnedSignal.load(tmp_path / "missing")
    (tmp_path / "signal.json").write_text('{"format": "something else"}')
    with pytest.raises(EarlyStopError, match="is not a dynagen-early-stop-signal"):
        LearnedSignal.load(tmp_path)


def test_learned_rule_stops_where_its_probability_passes(plain):
    from actors.early_stop import first_pass, signal_features

    sig = _toy_signal()
    cfg = EarlyStopConfig(signal=sig, interval=2, min_steps=2)
    out = EarlyStopSampler(plain.pipe, cfg)(PROMPTS, _gens(SEEDS), 10, GUIDANCE)
    assert out.steps_run == [8, 8, 8] and all(out.stopped_early)  # 8/10 > 0.6; 6/10 is not
    # The replay rule gives the same stop from the recorded checks.
    traces = []
    EarlyStopSampler(plain.pipe, EarlyStopConfig(threshold=0.0, interval=2, min_steps=2))(
        PROMPTS[:1], _gens(SEEDS[:1]), 10, GUIDANCE, on_check=traces.append)
    steps = [tr.step for tr in traces]
    p = [float(sig.prob(signal_features(tr.step, tr.budget, tr.t, tr.rate, tr.rate_prev, 1000))[0]) for tr in traces]
    passes = [pi >= sig.level and not np.isnan(tr.rate[0]) for pi, tr in zip(p, traces)]
    assert first_pass(steps, passes, 2) == 8
    # A level above every probability never stops; `level` overrides the signal's own.
    never = EarlyStopSampler(plain.pipe, EarlyStopConfig(signal=_toy_signal(), level=1.0, interval=2, min_steps=2))
    assert never(PROMPTS, _gens(SEEDS), 10, GUIDANCE).stopped_early == [False] * 3


def test_check_trace_carries_the_timestep_budget_and_previous_rate(sampler):
    traces = []
    sampler(PROMPTS, _gens(SEEDS), STEPS, GUIDANCE, on_check=traces.append)
    assert [tr.step for tr in traces] == [2, 4, 6] and all(tr.budget == STEPS for tr in traces)
    assert np.isnan(traces[0].rate).all() and np.isnan(traces[1].rate_prev).all()
    np.testing.assert_array_equal(traces[2].rate_prev, traces[1].rate)
    assert traces[0].t > traces[1].t > traces[2].t


def test_settings_select_the_committed_learned_signal_by_default():
    from pathlib import Path

    from actors.early_stop import LearnedSignal
    from dynagen.core.settings import ImageSettings

    kw = ImageSettings().early_stop_kwargs()
    sig = LearnedSignal.load(kw["early_stop_signal"])  # committed artifact, loads as the job would
    assert Path(kw["early_stop_signal"]).name == "early-stop" and 0 < sig.level <= 1
    assert sig.meta["model"] == "tiny-sd" and sig.meta["validation_auc"] > sig.meta["rate_only_validation_auc"]
    rate = ImageSettings(early_stop_signal="rate").early_stop_kwargs()
    assert rate["early_stop_signal"] is None and rate["early_stop_threshold"] == ImageSettings().early_stop_threshold
