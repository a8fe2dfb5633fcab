"""One-line error messages: what a user (or a failed row, or a night's record) reads instead of a traceback."""

from __future__ import annotations

import re


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first non-empty line of the message`` (just ``Type`` for an empty message), at most ``limit`` chars."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return (f"{type(e).__name__}: {first}" if first else type(e).__name__)[:limit]


_REMOTE_ERROR = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (\S.*)$")


def root_cause(e: BaseException, limit: int = 300) -> str:
    """One line for the deepest *informative* cause of a (Ray-wrapped) exception.

    Ray's wrappers say only that a task or actor died (the innermost is often an empty SystemException); the real
    error is the last ``Type: message`` line of the remote traceback their text carries."""
    chain, seen = [e], {id(e)}
    while True:
        nxt = getattr(chain[-1], "cause", None) or chain[-1].__cause__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            break
        chain.append(nxt)
        seen.add(id(nxt))
    informative = next((c for c in reversed(chain) if str(c).strip()), chain[-1])
    remote = [m for m in map(_REMOTE_ERROR.match, str(informative).splitlines()) if m]
    if remote:
        name, msg = remote[-1].group(1).rsplit(".", 1)[-1], remote[-1].group(2).strip()
        return f"{name}: {msg}"[:limit]
    return one_line(informative, limit)


def runtime_error(e: BaseException, what: str = "generation") -> str:
    """The reason a row records when a good row could not be finished: ``<what> failed: Type: first line``."""
    return f"{what} failed: {one_line(e, 500)}"[:500]
