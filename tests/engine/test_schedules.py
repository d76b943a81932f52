import math

import pytest

from medfm.engine.schedules import cosine_schedule


def test_warmup_rises_linearly_to_peak():
    values = [cosine_schedule(s, 100, 1.0, 0.0, warmup_steps=10) for s in range(10)]
    assert values == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_cosine_reaches_final_and_passes_midpoint():
    assert cosine_schedule(10, 110, 1.0, 0.1, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(60, 110, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.55)
    assert cosine_schedule(110, 110, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_schedule(500, 110, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.1)


def test_weight_decay_style_schedule_goes_up():
    start, end = cosine_schedule(0, 50, 0.04, 0.2), cosine_schedule(50, 50, 0.04, 0.2)
    assert (start, end) == pytest.approx((0.04, 0.2))
    assert not math.isnan(cosine_schedule(0, 1, 1.0, 0.0))


def test_bad_total_is_refused():
    with pytest.raises(ValueError):
        cosine_schedule(0, 0, 1.0, 0.0)
