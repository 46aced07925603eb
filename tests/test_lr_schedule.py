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
