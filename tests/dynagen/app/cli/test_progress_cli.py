"""The job commands' progress options (instant: --help only)."""

import re

from typer.testing import CliRunner

from dynagen.app.cli import app as cli


def test_run_commands_take_verbose():
    for cmd in (["run", "images", "--help"], ["run", "llm", "--help"]):
        r = CliRunner().invoke(cli, cmd, env={"COLUMNS": "200"})
        text = re.sub(r"\x1b\[[0-9;]*m", "", r.output)
        assert r.exit_code == 0 and "--verbose" in text and "Ray's own logs" in text


def test_runs_group_is_listed():
    r = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and re.search(r"runs\s+Past runs of a destination", r.output)
