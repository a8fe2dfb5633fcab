"""The progress board (pure): planned and finished rows, counted once per id."""

from actors.progress import ProgressBoard


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_board_counts_each_id_once_and_clocks_generation():
    clock = Clock()
    b = ProgressBoard(total=5, clock=clock)
    b.done(["bad"], [False], [0])  # failed before a model saw it: counted, but the clock has not started
    assert b.snapshot()["elapsed_s"] == 0.0
    b.planned(["a", "b", "c"], [10, 20, 30])
    b.planned(["a"], [99])  # a retried window: the first plan stands
    clock.t = 104.0
    b.done(["a", "b"], [True, False], [8, 0])
    b.done(["a"], [True], [8])  # a retried batch
    snap = b.snapshot()
    assert snap == dict(total=5, done=3, failed=2, planned_rows=3, planned_units=60.0, done_planned_units=30.0,
                        done_units=8.0, elapsed_s=4.0)
