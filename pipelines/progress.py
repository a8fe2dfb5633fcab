"""The driver's progress view of a batch job, in the job's units, and keeping Ray's own output off the terminal.

The model actors report to a progress board (``actors/progress.py``); a :class:`Poller` thread reads it (and the
id ledger, for rows skipped) and hands a :class:`~dynagen.core.progress.Snapshot` to a view: :class:`BarView`, a
rich progress bar in a terminal, or :class:`LineView`, one plain line every ~10 s otherwise (logs, CI, Ray Jobs).
:func:`quiet_ray` sends Ray's operator progress and info logs to Ray's log files unless ``--verbose``; warnings and
errors still reach the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from dynagen.core.progress import Snapshot, progress_details, progress_line

PLAIN_EVERY_S = 10.0  # a log line this often: frequent enough to see it move, rare enough for a night's log
POLL_S = 0.5  # how often the driver reads the board (a bar redraws at this rate)


class LineView:
    """Plain progress: one line every ``every_s`` seconds (first one at the first update), plus a final one."""

    def __init__(self, console, noun: str = "images", unit_name: str | None = None, every_s: float = PLAIN_EVERY_S,
                 clock=time.monotonic):
        self.console, self.noun, self.unit_name = console, noun, unit_name
        self.every_s, self.clock = every_s, clock
        self._last: float | None = None
        self._snap: Snapshot | None = None
        self._printed: tuple | None = None  # counts of the last line printed
        self._line: str | None = None

    def _print(self, snap: Snapshot) -> None:
        self._printed = (snap.finished, snap.failed, snap.total)
        line = progress_line(snap, self.noun, self.unit_name)
        if line != self._line:  # a log gains nothing from the same line twice (seen while LLM models load)
            self._line = line
            self.console.print(line, highlight=False)

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        now = self.clock()
        if self._last is None or now - self._last >= self.every_s:
            self._last = now
            self._print(snap)

    def close(self) -> None:
        # The final count, unless the last line already said it.
        if self._snap is not None and (self._snap.finished, self._snap.failed, self._snap.total) != self._printed:
            self._print(self._snap)


class BarView:
    """A rich progress bar: finished/total, failed, skipped, rate and the cost-aware ETA."""

    def __init__(self, console, noun: str = "images", unit_name: str | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.noun, self.unit_name = noun, unit_name
        self.progress = Progress(TextColumn(noun), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                                 console=console, auto_refresh=False, transient=False)
        self._task = None

    def update(self, snap: Snapshot) -> None:
        if self._task is None:
            self.progress.start()
            self._task = self.progress.add_task(self.noun, total=snap.total, detail="")
        detail = " · ".join(progress_details(snap, self.noun, self.unit_name))
        self.progress.update(self._task, completed=snap.finished, total=snap.total, detail=detail)
        self.progress.refresh()

    def close(self) -> None:
        if self._task is not None:
            self.progress.refresh()
            self.progress.stop()


def make_view(console, noun: str = "images", unit_name: str | None = None):
    """A bar in a terminal, plain lines otherwise."""
    return BarView(console, noun, unit_name) if console.is_terminal else LineView(console, noun, unit_name)


def snapshot_of(board: dict[str, Any], ledger: dict[str, int] | None) -> Snapshot:
    """The board's counts plus the ledger's skipped rows (done by an earlier run, or repeated ids)."""
    skipped = (ledger or {}).get("done", 0) + (ledger or {}).get("duplicate", 0)
    return Snapshot(skipped=skipped, **board)


class Poller:
    """Reads the board (and ledger) every ``interval`` s on a daemon thread while the run writes; one last read and
    the view's close when the ``with`` block ends. A failed read skips a tick: progress never fails a run."""

    def __init__(self, board, ledger, view, interval: float = POLL_S):
        self.board, self.ledger, self.view, self.interval = board, ledger, view, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dynagen-progress", daemon=True)

    def poll(self) -> None:
        import ray

        try:
            board = ray.get(self.board.snapshot.remote(), timeout=10)
            ledger = ray.get(self.ledger.stats.remote(), timeout=10) if self.ledger is not None else None
        except Exception:  # noqa: BLE001 - a slow or lost actor: skip this tick
            return
        self.view.update(snapshot_of(board, ledger))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        self.view.close()


def total_rows(shards, limit: int | None) -> int | None:
    """Rows the run will read: Σ shard rows, capped by ``--limit``; None if a shard was not counted."""
    counts = [s.rows for s in shards]
    if any(c is None for c in counts):
        return limit
    total = sum(counts)
    return min(total, limit) if limit else total


def show_nothing_new(view, shards, limit: int | None, counts: dict[str, int]) -> None:
    """A run with nothing new starts no Ray and no board: its one line still says so (every row skipped)."""
    if view is None:
        return
    view.update(Snapshot(elapsed_s=0.0, total=total_rows(shards, limit),
                         skipped=counts.get("done", 0) + counts.get("duplicate", 0)))
    view.close()


# Ray's own output ---------------------------------------------------------------------------------------------


class _WarningsOnly(logging.Filter):
    """Ray Data's console handler: warnings and errors only, minus the one warning our own quieting causes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Progress bars disabled")


def quiet_ray(verbose: bool = False) -> None:
    """Unless ``verbose``: Ray's info logs (cluster start, execution plans, operator progress every 10 s) go only to
    Ray's log files; in a terminal Ray's own bars (which count blocks, not images) are off. Call before Ray starts."""
    if verbose:
        return
    # Read when ray is first imported: the "Started a local Ray instance" kind of line stays in the logs.
    os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")
    import ray.data
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler) and not any(isinstance(f, _WarningsOnly) for f in handler.filters):
            handler.addFilter(_WarningsOnly())
    if sys.stdout.isatty():
        ray.data.DataContext.get_current().enable_progress_bars = False


def ray_log_dir() -> str | None:
    """Where Ray Data's logs of this session are (None before Ray starts)."""
    try:
        from ray.data._internal.logging import get_log_directory

        return get_log_directory()
    except Exception:  # noqa: BLE001
        return None
