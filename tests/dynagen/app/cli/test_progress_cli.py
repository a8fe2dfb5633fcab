"""The job commands' progress options (instant: --help only)."""

import re

from typer.testing import CliRunner

from dynagen.app.cli import app as cli


def test_run_and_submit_take_verbose():
    for cmd in (["run", "images", "--help"], ["run", "llm", "--help"], ["submit", "images", "--help"]):
        r = CliRunner().invoke(cli, cmd, env={"COLUMNS": "200"})
        text = re.sub(r"\x1b\[[0-9;]*m", "", r.output)
        assert r.exit_code == 0 and "--verbose" in text and "Ray's own logs" in text


def test_runs_group_is_listed():
    r = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and re.search(r"runs\s+Past runs of a destination", r.output)


def test_submit_forwards_verbose_to_the_job_entrypoint():
    from jobs.common import entry_main

    seen = {}

    def fake_run(settings, src, dest, run_id=None, verbose=False):
        seen.update(src=src, dest=dest, verbose=verbose)
        return 0

    assert entry_main(fake_run, None, ["--prompts", "p", "--out", "o", "--verbose"]) == 0
    assert seen == {"src": "p", "dest": "o", "verbose": True}
    assert entry_main(fake_run, None, ["--prompts", "p", "--out", "o"]) == 0 and seen["verbose"] is False
