import math

import pytest

from neox.train.lr_schedule import learning_rate


def closed_form(s, w, d, p, m):
    if s <= w:
        return p * s / w
    if s <= d:
        return m + (p - m) * 0.5 * (1 + math.cos(math.pi * (s - w) / (d - w)))
    return m


def test_llemma_7b_published_values():
    p, m = 1e-4, 1e-4 / 30
    lr = lambda s: learning_rate(s, p, m, 500, 48_000)  # noqa: E731
    assert lr(500) == pytest.approx(1e-4, rel=1e-12)
    # the Llemma write-up quotes "about 7.06e-6"; the closed form with min_lr = peak/30 gives 7.0893e-6
    assert lr(42_000) == pytest.approx(7.06e-6, rel=5e-3)
    assert lr(42_000) == pytest.approx(7.0893e-6, rel=1e-4)
    assert lr(48_000) == pytest.approx(3.3333e-6, rel=1e-4)
    assert lr(0) == 0.0 and lr(250) == pytest.approx(5e-5)
    # after the horizon the rate stays at the floor (GPT-NeoX main's cosine rose again)
    assert lr(60_000) == lr(48_000) == pytest.approx(m)


@pytest.mark.parametrize("w,d", [(500, 48_000), (500, 12_000), (4, 40), (1, 2)])
def test_matches_closed_form_everywhere(w, d):
    p, m = 5e-5, 5e-5 / 30
    for s in list(range(0, d + 20, max(1, d // 997))) + [w, w + 1, d - 1, d, d + 1]:
        assert learning_rate(s, p, m, w, d) == pytest.approx(closed_form(s, w, d, p, m), rel=1e-12, abs=1e-18)


def test_monotone_decay_after_warmup():
    vals = [learning_rate(s, 1.0, 0.1, 10, 100) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert learning_rate(100, 1.0, 0.1, 10, 100, "linear") == pytest.approx(0.1)
    assert learning_rate(55, 1.0, 0.1, 10, 100, "linear") == pytest.approx(0.55)
    assert learning_rate(77, 1.0, 0.1, 10, 100, "constant") == 1.0


# warmup-stable-decay: each shape's closed form, written out here (x: the decay's progress)
WSD_CLOSED = {
    "linear": lambda x: 1 - x,
    "cosine": lambda x: (1 + math.cos(math.pi * x)) / 2,
    "exponential": lambda x: 2 * 2 ** -x - 1,
    "minus_sqrt": lambda x: 1 - x ** 0.5,
}


def wsd_closed_form(s, w, d, n, p, m, shape):
    if s <= w:
        return p * s / w
    if s <= d - n:
        return p
    if s >= d:
        return m
    return m + (p - m) * WSD_CLOSED[shape]((s - (d - n)) / n)


@pytest.mark.parametrize("shape", sorted(WSD_CLOSED))
def test_wsd_equals_its_closed_form_at_every_step(shape):
    p, m, w, d, n = 3e-4, 3e-5, 100, 10_000, 2_000
    for s in range(0, d + 50):
        got = learning_rate(s, p, m, w, d, "wsd", n, shape)
        assert got == pytest.approx(wsd_closed_form(s, w, d, n, p, m, shape), rel=1e-12, abs=1e-12)
    assert learning_rate(d - n, p, m, w, d, "wsd", n, shape) == p  # the last stable step
    assert learning_rate(d, p, m, w, d, "wsd", n, shape) == pytest.approx(m, abs=1e-15)


def test_wsd_config_keys():
    from conftest import tiny_cfg

    from neox.config import WSD_STYLES, ConfigError
    from neox.train.lr_schedule import WSD_SHAPES, lr_for_config

    assert tuple(WSD_SHAPES) == WSD_STYLES  # the config's names are the schedule's shapes
    cfg = tiny_cfg(lr_decay_style="wsd", lr_wsd_decay_fraction=0.2, train_iters=100, lr_decay_iters=100,
                   warmup_iters=10, lr_wsd_decay_style="cosine", min_lr=0.0)
    assert cfg.schedule.lr_wsd_decay_iters == 20
    assert lr_for_config(cfg, 80) == cfg.lr and lr_for_config(cfg, 90) == pytest.approx(cfg.lr / 2)
    for bad, message in [
        (dict(lr_decay_style="wsd"), "lr_decay_style wsd needs 'lr_wsd_decay_iters' (steps) or"),
        (dict(lr_wsd_decay_iters=5), "key 'lr_wsd_decay_iters' is set but 'lr_decay_style' is 'cosine', not wsd"),
        (dict(lr_decay_style="wsd", lr_wsd_decay_iters=5, lr_wsd_decay_style="step"),
         "key 'lr_wsd_decay_style' must be one of linear, cosine, exponential, minus_sqrt, got 'step'"),
        (dict(lr_decay_style="wsd", lr_wsd_decay_fraction=1.5), "key 'lr_wsd_decay_fraction' must be in (0, 1]"),
        (dict(lr_decay_style="wsd", lr_wsd_decay_iters=95, warmup_iters=10, train_iters=100, lr_decay_iters=100),
         "key 'lr_wsd_decay_iters' (95) must be positive and at most lr_decay_iters - warmup_iters (90)"),
    ]:
        with pytest.raises(ConfigError) as e:
            tiny_cfg(**bad)
        assert str(e.value).startswith(message), str(e.value)


def test_the_schedule_picture_is_drawn_from_the_schedule(tmp_path):
    import os

    from conftest import REPO

    from neox.train.lr_schedule import plot_schedules

    plot_schedules(str(tmp_path / "lr.png"))
    assert (tmp_path / "lr.png").stat().st_size > 10_000 and os.path.isfile(os.path.join(REPO, "docs", "lr_schedules.png"))
