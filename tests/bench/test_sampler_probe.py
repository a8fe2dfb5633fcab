import numpy as np

from bench.sampler_probe import cross_seed_oracle


def test_cross_seed_oracle_gives_each_seed_the_other_seeds_count():
    grid = [4, 8, 16, 32]
    q0 = [0.90, 0.996, 0.998, 1.0]  # seed 0 passes 0.995 at 8 steps
    q1 = [0.80, 0.90, 0.97, 0.999]  # seed 1 only at 32
    steps, q = cross_seed_oracle(np.array([[q0, q1]]), grid, 0.995)
    assert steps.tolist() == [[32, 8]]  # each seed is run at what the *other* seed needed
    assert q.tolist() == [[1.0, 0.90]]  # and scored on its own curve: seed 1 under-stepped
