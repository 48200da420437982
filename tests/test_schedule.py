import numpy as np
import pytest

from devtms.schedule import checkpoint_steps, log_steps


@pytest.mark.parametrize("total,points,every", [(1, 50, 0), (10, 50, 0), (20000, 50, 0),
                                                 (3000, 20, 500), (997, 0, 100), (5, 0, 0)])
def test_schedule_is_sorted_unique_integers_with_zero_and_the_last_step(total, points, every):
    steps = checkpoint_steps(total, points, every)
    assert steps[0] == 0 and steps[-1] == total
    assert steps == sorted(set(steps))
    assert all(isinstance(s, int) for s in steps)


def test_log_schedule_is_devinterps():
    expected = sorted(set(np.logspace(0, np.log10(20000), 50).astype(int)))
    assert log_steps(20000, 50) == [int(s) for s in expected]


def test_union_of_log_and_linear():
    steps = checkpoint_steps(1000, log_points=4, linear_every=250)
    assert steps == [0, 1, 10, 100, 250, 500, 750, 1000]


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError):
        checkpoint_steps(0)
