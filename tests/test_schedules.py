import pytest

from aevlp.errors import ConfigError
from aevlp.schedules import gr_schedule

COCO_BETA, ALPHA = [0, 10, -2, -8], [0.5, 2, 0.8, 0.5]


def test_coco_endpoints():
    s1 = gr_schedule(1, 8, COCO_BETA, ALPHA)
    assert (s1["w"], s1["b"]) == (0.0, -2.0)
    assert s1["mu"] == pytest.approx(0.5 + 0.3 / 8) and s1["sigma"] == pytest.approx(2 - 1.5 / 8)
    s8 = gr_schedule(8, 8, COCO_BETA, ALPHA)
    assert s8 == pytest.approx({"w": 8.75, "b": -7.25, "mu": 0.8, "sigma": 0.5})


def test_voc_and_nus_tables():
    assert gr_schedule(8, 8, [0, 2, -2, -2], ALPHA)["w"] == pytest.approx(1.75)
    assert gr_schedule(8, 8, [0, 2, -2, -2], ALPHA)["b"] == pytest.approx(-2)
    assert gr_schedule(10, 10, COCO_BETA, ALPHA) == pytest.approx({"w": 9, "b": -7.4, "mu": 0.8, "sigma": 0.5})


def test_linear_in_epoch_and_lag():
    ws = [gr_schedule(e, 10, COCO_BETA, ALPHA)["w"] for e in range(1, 11)]
    mus = [gr_schedule(e, 10, COCO_BETA, ALPHA)["mu"] for e in range(1, 11)]
    assert ws[0] == ws[1] - 1.0 == 0.0  # lag: w stays at w0 at e = 1
    assert all(b - a == pytest.approx(1.0) for a, b in zip(ws, ws[1:]))
    assert all(b - a == pytest.approx(0.03) for a, b in zip(mus, mus[1:]))
    assert ws[-1] < COCO_BETA[1]  # never reaches w_T


def test_linear_init_holds_initial_values():
    for e in (1, 2):
        assert gr_schedule(e, 6, COCO_BETA, ALPHA, linear_init=2) == {"w": 0, "b": -2, "mu": 0.5, "sigma": 2}
    assert gr_schedule(6, 6, COCO_BETA, ALPHA, linear_init=2)["mu"] == pytest.approx(0.8)
    assert gr_schedule(4, 6, COCO_BETA, ALPHA, linear_init=2)["w"] == pytest.approx(10 * 1 / 4)


@pytest.mark.parametrize("args", [(0, 8, COCO_BETA, ALPHA), (9, 8, COCO_BETA, ALPHA), (1, 8, [0, 1], ALPHA),
                                  (1, 8, COCO_BETA, [0.5, 0, 0.8, 0.5]), (1, 8, COCO_BETA, ALPHA, 8)])
def test_validation(args):
    with pytest.raises(ConfigError):
        gr_schedule(*args)
