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
    b.planned(["a", "b", "c"], [10, 20, 30])  # the step stage predicts ahead: the clock still waits
    b.planned(["a"], [99])  # a retried window: the first plan stands
    assert b.snapshot()["elapsed_s"] == 0.0
    clock.t = 101.0
    b.start()  # the model actor has its first rows
    clock.t = 105.0
    b.start()  # a second actor: the clock keeps its start
    b.done(["a", "b"], [True, False], [8, 0])
    b.done(["a"], [True], [8])  # a retried batch
    snap = b.snapshot()
    assert snap == dict(total=5, done=3, failed=2, planned_rows=3, planned_units=60.0, done_planned_units=30.0,
                        done_units=8.0, batch_sums=(), elapsed_s=4.0)


def test_board_sums_batch_times_for_the_cost_fit():
    b = ProgressBoard(total=4)
    b.planned(["a", "b", "c", "d"], [10, 10, 30, 30])
    b.done(["a", "b"], [True, True], [10, 10], seconds=3.0)  # 2 rows, 20 planned steps
    b.done(["a", "b"], [True, True], [10, 10], seconds=3.0)  # a retried batch adds nothing
    b.done(["c"], [True], [30], seconds=None)  # no time: counted, not fitted
    assert b.snapshot()["batch_sums"] == (4.0, 40.0, 400.0, 6.0, 60.0, 3.0)


def test_reports_reach_a_board_actor_and_a_lost_board_is_ignored(ray_local):
    import numpy as np
    import ray

    from actors.progress import make_actor, report, report_planned

    board = make_actor(3)
    batch = {"id": np.asarray(["a", "b", "c"]), "status": np.asarray(["ok", "failed", "ok"]),
             "steps": np.asarray([20, 0, 40])}
    report_planned(board, batch)  # what the step stage sends: failed rows plan nothing
    report(board, "start")
    report(board, "done", ["a"], [True], [20], 1.5)
    snap = ray.get(board.snapshot.remote())
    assert (snap["planned_rows"], snap["planned_units"], snap["done"], snap["done_planned_units"]) == (3, 60.0, 1, 20.0)
    assert snap["batch_sums"][5] == 1.5
    ray.kill(board)
    report(board, "done", ["c"], [True], [40])  # the run is over: progress never fails it
