"""One-line messages: what a user reads instead of a traceback."""

from dynagen.core.errors import one_line, root_cause, runtime_error


def test_one_line_takes_the_first_non_empty_line():
    assert one_line(ValueError("\n  bad seed  \ntraceback")) == "ValueError: bad seed"
    assert one_line(KeyError()) == "KeyError" and len(one_line(ValueError("x" * 999))) == 300


def test_root_cause_digs_through_ray_wrappers_to_the_remote_error():
    class SystemException(Exception):  # Ray Data's innermost wrapper: no message
        pass

    died = RuntimeError("The actor died because of an error raised in its creation task\n  File x, line 3\n"
                        "    raise ArtifactError(...)\nactors.stepsaver.ArtifactError: /m: missing head.safetensors")
    died.__cause__ = SystemException()
    outer = ValueError("run failed")
    outer.__cause__ = died
    assert root_cause(outer) == "ArtifactError: /m: missing head.safetensors"
    plain = OSError("disk full")
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = plain
    assert root_cause(wrapped) == "OSError: disk full"


def test_runtime_error_names_the_stage():
    assert runtime_error(RuntimeError("oom\ndetail"), "calibration") == "calibration failed: RuntimeError: oom"
