import math

import numpy as np
import pytest
import torch

from aevlp.errors import ConfigError
from aevlp.losses import LOSSES, build_loss, gce_negative, gce_positive, gpr_loss, gr_loss, reweight, soft_pseudo_label

D = torch.float64
P = torch.tensor([[.9, .6, .2, .05], [.3, .7, .5, .01]], dtype=D)
Y = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
Z = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0]])
COCO = dict(q2=0.01, q3=1.0, lam1=0.7, lam2=0.5, rho=0.9, reg=0.001, expected_pos=2.9)
E1 = dict(w=0.0, b=-2.0, mu=0.5375, sigma=1.8125)
E8 = dict(w=8.75, b=-7.25, mu=0.8, sigma=0.5)


def logit(p):
    return torch.log(p) - torch.log1p(-p)


def test_components_golden():
    assert soft_pseudo_label(torch.tensor([0.1, 0.9]), 0.0, -2.0) == pytest.approx([0.119203] * 2, abs=1e-6)
    assert reweight(torch.tensor(0.3), 0.8, 0.5).item() == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert gce_positive(logit(torch.tensor(0.5, dtype=D)), 0.01).item() == pytest.approx(0.690750, abs=1e-6)
    assert gce_negative(logit(torch.tensor(0.5, dtype=D)), 1.5).item() == pytest.approx(0.430964, abs=1e-6)


def test_component_properties():
    p = torch.linspace(0.001, 0.999, 200, dtype=D)
    z = logit(p)
    k = soft_pseudo_label(p, 3.0, -1.0)
    assert torch.all((k > 0) & (k < 1)) and torch.all(torch.diff(k) > 0)
    v = reweight(p, 0.4, 0.2)
    assert torch.all((v > 0) & (v <= 1))
    assert reweight(torch.tensor(0.4), 0.4, 0.2).item() == 1.0
    assert reweight(torch.tensor(0.3), 0.4, 0.2).item() == pytest.approx(reweight(torch.tensor(0.5), 0.4, 0.2).item())
    assert reweight(torch.tensor(0.9), 0.4, 1e6).item() == pytest.approx(1.0)
    l2 = gce_positive(z, 0.3)
    assert torch.all(torch.diff(l2) < 0) and torch.all(l2 >= 0)
    assert gce_positive(torch.tensor(60.0, dtype=D), 0.3).item() == pytest.approx(0.0, abs=1e-12)
    assert gce_positive(z, 1e-6) == pytest.approx(-torch.log(p), abs=1e-4)
    assert torch.all(torch.diff(gce_negative(z, 1.5)) > 0)
    assert gce_negative(z, 1.0) == pytest.approx(p, abs=1e-12)
    assert gce_negative(torch.tensor(-60.0, dtype=D), 2.0).item() == pytest.approx(0.0, abs=1e-12)
    x = torch.tensor([0.3], requires_grad=True)
    assert not soft_pseudo_label(x, 2.0, 0.0).requires_grad and not reweight(x, 0.5, 1.0).requires_grad


def gpr_by_hand(P, Y, Z, *, w, b, mu, sigma, q2, q3, lam1, lam2, rho, reg, expected_pos):
    """docs/method.md's GPR table written out entry by entry with the math module: an independent reference."""
    total, n, c = 0.0, len(P), len(P[0])
    for i in range(n):
        for j in range(c):
            p, y, z = float(P[i][j]), int(Y[i][j]), int(Z[i][j])
            k = 1 / (1 + math.exp(-(w * p + b)))
            v = math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))
            if y == 1:
                ell = -math.log(p + 1e-7)
            elif z == 1:
                weight = 1 - min(max(v, 1 - lam1), 1 - lam2)
                ell = weight * (rho * -math.log(p + 1e-7) + (1 - rho) * -math.log(1 - p + 1e-7))
            elif z == -1:
                ell = v * -math.log(1 - p + 1e-7)
            else:
                ell = v * (k * (1 - p ** q2) / q2 + (1 - k) * (1 - (1 - p) ** q3) / q3)
            total += ell
    row_sum = sum(sum(float(x) for x in row) for row in P) / n
    return total / (n * c) + reg * (row_sum - expected_pos) ** 2 / c ** 2


def test_gpr_golden():
    """docs/method.md's worked GPR example (COCO hyperparameters), checked two ways: the hand-written formula
    above reproduces the stated totals, and gpr_loss reproduces the hand-written formula."""
    z = logit(P)
    stated = [(Z, E1, COCO, 0.385679), (Z, E8, COCO, 0.230693),
              (torch.zeros_like(Z), E1, dict(COCO, reg=0.0), 0.405200),
              (torch.zeros_like(Z), E8, dict(COCO, reg=0.0), 0.217573)]
    for zl, sch, hp, value in stated:
        ref = gpr_by_hand(P.tolist(), Y.tolist(), zl.tolist(), **sch, **hp)
        assert ref == pytest.approx(value, abs=1e-6)
        assert gpr_loss(z, Y, zl, **sch, **hp).item() == pytest.approx(ref, abs=1e-9)
    # the regulariser's value before weighting: (mean row sum - E)^2 / C^2 = ((2.25+1.51)/2 - 2.9)^2 / 16
    assert ((sum(P[0].tolist()) + sum(P[1].tolist())) / 2 - 2.9) ** 2 / 16 == pytest.approx(0.100806, abs=1e-6)
    reg_part = gpr_loss(z, Y, Z, **E1, **COCO) - gpr_loss(z, Y, Z, **E1, **dict(COCO, reg=0.0))
    assert (reg_part / 0.001).item() == pytest.approx(0.100806, abs=1e-6)
    rng = torch.Generator().manual_seed(0)  # random inputs against the same reference
    pr = torch.rand(5, 7, generator=rng, dtype=D) * 0.98 + 0.01
    yr = torch.zeros(5, 7, dtype=torch.long)
    yr[torch.arange(5), torch.randint(0, 7, (5,), generator=rng)] = 1
    zr = torch.randint(-1, 2, (5, 7), generator=rng)
    hp = dict(COCO, expected_pos=1.5, reg=0.05)
    assert gpr_loss(logit(pr), yr, zr, **E8, **hp).item() == pytest.approx(
        gpr_by_hand(pr.tolist(), yr.tolist(), zr.tolist(), **E8, **hp), abs=1e-9)


def test_gpr_reduces_to_gr(rng):
    z = torch.randn(6, 9, dtype=D) * 3
    y = torch.zeros(6, 9, dtype=torch.long)
    y[torch.arange(6), torch.randint(0, 9, (6,))] = 1
    for sch in (E1, E8):
        g = gr_loss(z, y, **sch, q2=0.01, q3=1.0)
        gpr = gpr_loss(z, y, torch.zeros_like(y), **sch, **dict(COCO, reg=0.0))
        assert gpr.item() == pytest.approx(g.item(), abs=1e-12)


def test_observed_positive_wins_and_neutral_negatives():
    z = logit(P)
    base = gpr_loss(z, Y, torch.zeros_like(Z), **E8, **COCO)
    # pseudo labels on observed entries do not change anything
    assert gpr_loss(z, Y, Y * -1, **E8, **COCO).item() == pytest.approx(base.item(), abs=1e-12)
    assert gpr_loss(z, Y, Y, **E8, **COCO).item() == pytest.approx(base.item(), abs=1e-12)


def _entry(p, y, z, sch, **kw):
    """Per-entry loss of a 1×1 problem, without the regulariser."""
    return gpr_loss(logit(torch.tensor([[p]], dtype=D)), torch.tensor([[y]]), torch.tensor([[z]]), **sch,
                    **dict(COCO, reg=0.0, **kw)).item()


def test_positive_pseudo_weight_range():
    sch = dict(w=0.0, b=-2.0, mu=0.5, sigma=0.1)
    ce = lambda p: 0.9 * -math.log(p + 1e-7) + 0.1 * -math.log(1 - p + 1e-7)  # noqa: E731
    weights = [_entry(p, 0, 1, sch) / ce(p) for p in (0.5, 0.45, 0.4, 0.3, 0.1, 0.02)]
    assert all(0.5 - 1e-9 <= wt <= 0.7 + 1e-9 for wt in weights)
    assert weights[0] == pytest.approx(0.5) and weights[-1] == pytest.approx(0.7)
    assert all(b >= a - 1e-12 for a, b in zip(weights, weights[1:]))  # does not increase towards mu


def test_rho_one_and_negative_term():
    sch = dict(w=0.0, b=-2.0, mu=0.5, sigma=1.0)
    v = math.exp(-(0.3 - 0.5) ** 2 / 2)
    wt = 1 - min(max(v, 0.3), 0.5)
    assert _entry(0.3, 0, 1, sch, rho=1.0) == pytest.approx(wt * -math.log(0.3 + 1e-7))
    assert _entry(0.3, 0, -1, sch) == pytest.approx(v * -math.log(0.7 + 1e-7))


def test_regulariser_properties():
    z = torch.zeros(4, 6, dtype=D, requires_grad=True)  # p = 0.5 -> row sum 3
    y0 = torch.zeros(4, 6, dtype=torch.long)
    kw = dict(**E1, q2=0.01, q3=1.0, lam1=0.7, lam2=0.5, rho=0.9)
    with_reg = gpr_loss(z, y0, y0, **kw, reg=1.0, expected_pos=3.0)
    assert with_reg.item() == pytest.approx(gpr_loss(z, y0, y0, **kw, reg=0.0, expected_pos=3.0).item())
    r1 = gpr_loss(z, y0, y0, **kw, reg=1.0, expected_pos=1.0) - gpr_loss(z, y0, y0, **kw, reg=0.0, expected_pos=1.0)
    assert r1.item() == pytest.approx((3.0 - 1.0) ** 2 / 36)
    reg_only = lambda zz: gpr_loss(zz, y0, y0, **kw, reg=1.0, expected_pos=1.0) - \
        gpr_loss(zz, y0, y0, **kw, reg=0.0, expected_pos=1.0)  # noqa: E731
    (g,) = torch.autograd.grad(reg_only(z), z)
    assert torch.allclose(g, g[0, 0].expand_as(g))  # shared across classes (same p)


def test_gradcheck_with_constants():
    """Gradient w.r.t. logits equals finite differences when K, V, clip(V) are held constant."""
    torch.manual_seed(0)
    z0 = torch.randn(3, 5, dtype=D)
    y = torch.zeros(3, 5, dtype=torch.long)
    y[:, 0] = 1
    zl = torch.tensor([[0, 1, -1, 0, 0], [0, 0, 1, -1, 0], [0, 1, 1, 0, -1]])
    sch, hp = E8, COCO
    p0 = torch.sigmoid(z0)
    K = torch.sigmoid(sch["w"] * p0 + sch["b"])
    V = torch.exp(-((p0 - sch["mu"]) ** 2) / (2 * sch["sigma"] ** 2))
    Vc = V.clamp(1 - hp["lam1"], 1 - hp["lam2"])

    def analytic_form(z):  # same loss with K, V constants, written independently
        p = torch.sigmoid(z)
        nl = lambda x: -torch.log(x + 1e-7)  # noqa: E731
        unk = V * (K * (1 - p ** hp["q2"]) / hp["q2"] + (1 - K) * (1 - (1 - p) ** hp["q3"]) / hp["q3"])
        pos = (1 - Vc) * (hp["rho"] * nl(p) + (1 - hp["rho"]) * nl(1 - p))
        neg = V * nl(1 - p)
        ent = torch.where(zl == 1, pos, torch.where(zl == -1, neg, unk))
        ent = torch.where(y == 1, nl(p), ent)
        return ent.mean() + hp["reg"] * (p.sum(1).mean() - hp["expected_pos"]) ** 2 / 25

    z = z0.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(gpr_loss(z, y, zl, **sch, **hp), z)
    assert torch.autograd.gradcheck(analytic_form, (z0.clone().requires_grad_(True),))
    (g_ref,) = torch.autograd.grad(analytic_form(z), z)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_finite_at_extremes_and_bf16(name):
    from aevlp.config import DEFAULTS
    from aevlp.losses import RunInfo, build_method
    params = dict(DEFAULTS["loss"], q2=0.01, q3=1.0, lam1=0.7, lam2=0.5, rho=0.9, reg=0.001, expected_pos=2.0)
    y = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
    soft = np.array([[np.nan, 0.3, 0.9, 0.0], [1.0, np.nan, 0.5, 0.2]])  # gpr-soft's calibrated targets
    fn = build_method(name, params, RunInfo(num_rows=2, num_classes=4, observed=y.numpy(), seed=0, epochs=8, lr=1e-3,
                                            soft_targets=lambda: soft))
    if LOSSES[name].needs_spatial:  # methods with a head of their own read the statistics of its last forward
        from aevlp.stage_two.models import build_model
        model = build_model("small-cnn", 4)
        fn.prepare_model(model)
        model(torch.randn(2, 3, 32, 32))
    z = torch.tensor([[-50.0, 50.0, 0.0, 10.0], [50.0, -50.0, -10.0, 0.0]], requires_grad=True)
    zl = torch.tensor([[0, 1, -1, 0], [1, 0, 0, -1]])
    full = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])
    sch = dict(w=8.75, b=-7.25, mu=0.8, sigma=0.5)
    kw = dict(rows=[0, 1], pseudo=zl, full=full, schedule=sch, epoch=3)
    out = fn.loss(z, y, **kw)
    (g,) = torch.autograd.grad(out, z)
    assert torch.isfinite(out) and torch.all(torch.isfinite(g))
    zb = z.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outb = fn.loss(zb, y, **kw)
    (gb,) = torch.autograd.grad(outb, zb)
    assert outb.dtype == torch.float32 and torch.isfinite(outb) and torch.all(torch.isfinite(gb.float()))


def test_baseline_values():
    z = logit(torch.tensor([[0.8, 0.3]], dtype=D))
    y = torch.tensor([[1, 0]])
    an = build_loss("an", {})(z, y).item()
    assert an == pytest.approx((-math.log(0.8 + 1e-5) - math.log(0.7 + 1e-5)) / 2)
    full = build_loss("bce-full", {})(z, y, full=torch.tensor([[1, 1]])).item()
    assert full == pytest.approx((-math.log(0.8 + 1e-5) - math.log(0.3 + 1e-5)) / 2)
    h = -(0.3 * math.log(0.3 + 1e-5) + 0.7 * math.log(0.7 + 1e-5))
    assert build_loss("em", {"em_alpha": 0.2})(z, y).item() == pytest.approx((-math.log(0.8 + 1e-5) - 0.2 * h) / 2)
    empl = build_loss("em-pl", {"em_alpha": 0.2})(z, y, pseudo=torch.tensor([[0, 1]])).item()
    pl_term = 0.7 * (0.9 * -math.log(0.3 + 1e-5) + 0.1 * -math.log(0.7 + 1e-5))
    assert empl == pytest.approx((-math.log(0.8 + 1e-5) + pl_term) / 2)
    anpl = build_loss("an-pl", {})(z, y, pseudo=torch.tensor([[0, 1]])).item()
    assert anpl == pytest.approx((-math.log(0.8 + 1e-7) - math.log(0.3 + 1e-7)) / 2)  # the AEVLP code's eps
    epr = build_loss("epr", {"expected_pos": 2.0, "reg": 1.0})(z, y).item()
    assert epr == pytest.approx(-math.log(0.8 + 1e-5) / 2 + (1.1 - 2.0) ** 2 / 4)


def test_build_loss_errors():
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("focal", {})
    with pytest.raises(ConfigError, match="needs"):
        build_loss("gpr", {"q2": 0.01})
    with pytest.raises(ConfigError, match="lam1 must be >= lam2"):
        gpr_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), **E1, **dict(COCO, lam1=0.2))
    with pytest.raises(ConfigError, match="q2"):
        gr_loss(torch.zeros(1, 2), torch.zeros(1, 2), **E1, q2=0.0, q3=1.0)
    with pytest.raises(ConfigError, match="sigma"):
        gr_loss(torch.zeros(1, 2), torch.zeros(1, 2), w=0, b=0, mu=0.5, sigma=0.0, q2=0.1, q3=1.0)
    with pytest.raises(ValueError, match="does not match"):
        gr_loss(torch.zeros(2, 2), torch.zeros(1, 2), **E1, q2=0.1, q3=1.0)
