"""One rule for a usable prompt: the batch source, StepSaver, the router and Serve refuse the same prompts."""

import pytest

from dynagen.core.records import prompt_problem

BAD = [("", "empty"), (" \t\n", "empty"), ("a\x00b", "nul"), ("x" * 11, "too_long"), (7, "type")]


@pytest.mark.parametrize("prompt, kind", BAD)
def test_every_entry_point_refuses_the_same_prompts(prompt, kind):
    from actors import router, stepsaver
    from dynagen.app.serve.api import ClientError, check_prompt
    from dynagen.core.sources import normalize_row

    problem = prompt_problem(prompt, max_chars=10)
    assert problem is not None and problem.kind == kind
    row = normalize_row({"prompt": prompt}, max_prompt_chars=10)
    assert row["status"] == "failed" and problem.reason in row["error"]
    assert stepsaver.validate_prompt(prompt, max_chars=10) == problem.reason
    if kind != "too_long":  # the router has no length limit: it truncates to its encoder's window
        assert router.validate_prompt(prompt) == problem.reason
    if isinstance(prompt, str):
        with pytest.raises(ClientError) as e:
            check_prompt(prompt, ("body", "prompt"), max_chars=10)
        assert e.value.msg == problem.reason and e.value.status == (413 if kind == "too_long" else 422)


def test_a_usable_prompt_passes_everywhere():
    from actors import router, stepsaver
    from dynagen.app.serve.api import check_prompt
    from dynagen.core.sources import normalize_row

    p = "a red circle"
    assert prompt_problem(p, 10 ** 6) is None and normalize_row({"prompt": p}, 100)["status"] == "ok"
    assert stepsaver.validate_prompt(p) is None and router.validate_prompt(p) is None
    check_prompt(p, ("body", "prompt"), max_chars=100)


def test_failure_reasons_count_by_kind_and_print_cleanly():
    """The run summary line once read "failures: invalid id '../x' (allowed: letters, digits, '.', '_', '-' ×1;":
    a reason was cut at the ';' inside its own text, and every bad id counted apart."""
    from dynagen.core.records import RunSummary, reason_key
    from dynagen.core.sources import normalize_row
    from jobs.common import print_failures

    errors = [normalize_row({"prompt": "p", "id": bad}, 100)["error"] for bad in ("../x", "%2e%2e", "/abs")]
    errors += [normalize_row({"prompt": "p", "seed": s}, 100)["error"] for s in ("x", -1)]
    errors += ["invalid JSON line 3 (Expecting value)", "invalid JSON line 9 (Expecting value)"]
    assert [reason_key(e) for e in errors] == ["invalid id"] * 3 + ["bad seed"] * 2 + ["invalid JSON line"] * 2
    assert reason_key("generation failed: RuntimeError: out of memory") == "generation failed: RuntimeError: out of memory"

    lines = []

    class Console:
        def print(self, text, **_):
            lines.append(text)

    print_failures(Console(), RunSummary(run_id="r", source="s", dest="d", started_at="",
                                         failure_reasons={"invalid id": 3, "bad seed": 2}))
    assert lines == ["failures: invalid id ×3; bad seed ×2"]
