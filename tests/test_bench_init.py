"""bench.init_effect: the loss windows it reports."""

import pytest

from bench.init_effect import loss_window


def test_loss_window_averages_the_asked_part_of_the_run():
    losses = {step: float(step) for step in range(1, 11)}            # steps 1..10
    assert loss_window(losses, 0.0, 0.2) == pytest.approx(1.5)       # steps 1, 2
    assert loss_window(losses, 0.8, 1.0) == pytest.approx(9.5)       # steps 9, 10
    assert loss_window({1: 4.0}, 0.8, 1.0) == 4.0                   # a window never comes out empty
