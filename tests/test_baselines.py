"""The comparison methods of the paper's table, each against an independent numpy computation of its
formula (docs/training.md), hand-computed small cases, and the schedules against their stated formulas."""
import math

import numpy as np
import pytest
import torch

from aevlp.config import DEFAULTS
from aevlp.losses import (
    LOSSES,
    RunInfo,
    an_ls_loss,
    boost_lu,
    build_loss,
    build_method,
    em_apl_loss,
    iu_loss,
    iun_loss,
    ll_loss,
    role_loss,
    wan_loss,
)
from aevlp.losses.em import apl_selection_size
from aevlp.losses.ll import ll_rate

EPS = 1e-5


def nl(x):
    return -np.log(x + EPS)


def sig(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def batch():
    g = np.random.default_rng(3)
    z = g.normal(0, 2, size=(6, 7))
    y = np.zeros((6, 7), int)
    y[np.arange(6), g.integers(0, 7, 6)] = 1
    t = y | (g.random((6, 7)) < 0.3)
    return z, y, t


def T(a, dtype=torch.float64):
    return torch.as_tensor(a, dtype=dtype)


def test_an_ls_hand_case_and_random(batch):
    # one positive p = 0.8, one unknown p = 0.3, ls = 0.1
    z = T([[math.log(4), math.log(3 / 7)]])
    hand = (0.9 * -math.log(0.8 + EPS) + 0.1 * -math.log(0.2 + EPS) + 0.9 * -math.log(0.7 + EPS)
            + 0.1 * -math.log(0.3 + EPS)) / 2
    assert an_ls_loss(z, T([[1, 0]], torch.long)).item() == pytest.approx(hand, abs=1e-9)
    z, y, _ = batch
    p = sig(z)
    ref = np.where(y == 1, 0.8 * nl(p) + 0.2 * nl(1 - p), 0.8 * nl(1 - p) + 0.2 * nl(p)).mean()
    assert an_ls_loss(T(z), T(y, torch.long), ls_coef=0.2).item() == pytest.approx(ref, abs=1e-9)


def test_wan_weights_negatives_by_one_over_c_minus_one(batch):
    z, y, _ = batch
    p = sig(z)
    ref = np.where(y == 1, nl(p), nl(1 - p) / 6).mean()
    assert wan_loss(T(z), T(y, torch.long)).item() == pytest.approx(ref, abs=1e-9)


def test_iun_reads_true_negatives_only_and_iu_observed_only(batch):
    z, y, t = batch
    p = sig(z)
    ref = np.where(y == 1, nl(p), np.where(t == 0, nl(1 - p), 0.0)).mean()
    assert iun_loss(T(z), T(y, torch.long), T(t, torch.long)).item() == pytest.approx(ref, abs=1e-9)
    y_neg = y.copy()
    y_neg[0, (y[0] == 0).nonzero()[0][0]] = -1  # one observed negative
    ref = np.where(y_neg == 1, nl(p), np.where(y_neg == -1, nl(1 - p), 0.0)).mean()
    assert iu_loss(T(z), T(y_neg, torch.long)).item() == pytest.approx(ref, abs=1e-9)


def test_role_loss_formula_and_gradients(batch):
    z, y, _ = batch
    est = np.random.default_rng(1).uniform(0.05, 0.95, size=z.shape)
    p, e, k = sig(z), est, 1.5
    c = z.shape[1]
    pos = np.where(y == 1, nl(p), 0) + np.where(y == 1, nl(e), 0)
    cross = e * nl(p) + (1 - e) * nl(1 - p) + p * nl(e) + (1 - p) * nl(1 - e)
    reg = 0.5 * ((p.sum(1).mean() - k) ** 2 + (e.sum(1).mean() - k) ** 2) / c ** 2
    ref = (0.5 * pos + 0.5 * cross).mean() + reg
    zt, et = T(z).requires_grad_(True), T(est).requires_grad_(True)
    out = role_loss(zt, T(y, torch.long), et, expected_pos=k)
    assert out.item() == pytest.approx(ref, abs=1e-9)
    gz, ge = torch.autograd.grad(out, (zt, et))
    # the classifier half sees the estimate as a constant target, and vice versa: d/dŶ has no p-term via p
    ge_ref = (0.5 * np.where(y == 1, -1 / (e + EPS), 0) + 0.5 * (-p / (e + EPS) + (1 - p) / (1 - e + EPS))) / z.size \
        + 0.5 * 2 * (e.sum(1).mean() - k) / z.shape[0] / c ** 2
    assert np.allclose(ge.numpy(), ge_ref, atol=1e-9) and torch.all(torch.isfinite(gz))


def run_info(y, epochs=10, n=None):
    return RunInfo(num_rows=n or len(y), num_classes=y.shape[1], observed=y, seed=0, epochs=epochs, lr=1e-3)


def test_role_estimator_init_and_state(batch):
    _, y, _ = batch
    m = build_method("role", dict(DEFAULTS["loss"], expected_pos=1.5), run_info(y))
    est = torch.sigmoid(m.estimator.detach()).numpy()
    assert np.allclose(est[y == 1], 0.995) and np.all((est[y == 0] >= 0.4 - 1e-6) & (est[y == 0] <= 0.6 + 1e-6))
    assert m.param_groups()[0]["lr"] == pytest.approx(1e-2)  # lr x role_lr_mult (Cole: 10)
    m2 = build_method("role", dict(DEFAULTS["loss"], expected_pos=1.5), run_info(y))
    m2.estimator.data.zero_()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.estimator, m.estimator)


def test_em_apl_loss_formula(batch):
    z, y, _ = batch
    p = sig(z)
    soft = np.full(z.shape, -1.0)
    soft[y == 0] = np.where(np.random.default_rng(2).random((y == 0).sum()) < 0.4, 0.07, -1.0)
    alpha, beta = 0.2, 0.02
    ent = -(p * np.log(p + EPS) + (1 - p) * np.log(1 - p + EPS))
    s = np.clip(soft, 0, None)
    ref = np.where(y == 1, nl(p), np.where(soft >= 0, beta * (s * nl(p) + (1 - s) * nl(1 - p)), -alpha * ent)).mean()
    out = em_apl_loss(T(z), T(y, torch.long), T(soft), em_alpha=alpha, apl_beta=beta)
    assert out.item() == pytest.approx(ref, abs=1e-9)


def test_apl_selects_the_lowest_scores_per_class_after_warmup():
    assert apl_selection_size(100, 0.9, 10, 5) == 18 and apl_selection_size(7, 0.9, 10, 4) == 1
    g = np.random.default_rng(0)
    y = np.zeros((40, 3), int)
    y[np.arange(40), g.integers(0, 3, 40)] = 1
    params = dict(DEFAULTS["loss"], apl_warmup=2, apl_neg_proportion=0.9)
    m = build_method("em-apl", params, run_info(y, epochs=6))  # the run's epochs do not set the count
    scores = g.random((40, 3))
    assert m.end_epoch(1, lambda: pytest.fail("no scores before warmup")) == {}
    m.end_epoch(2, lambda: scores)
    soft = m.soft.numpy()
    for c in range(3):
        unobs = np.flatnonzero(y[:, c] == 0)
        n = int(0.9 * len(unobs) / (10 - 2))  # Zhou et al.'s code: num_epochs fixed at 10 (main.py:290, 372)
        expect = unobs[np.argsort(scores[unobs, c])[:n]]
        assert sorted(np.flatnonzero(soft[:, c] >= 0)) == sorted(expect)
        assert np.allclose(soft[expect, c], scores[expect, c])  # valued at their prediction
    first = soft.copy()
    m.end_epoch(3, lambda: np.zeros((40, 3)))  # kept, and new ones come from the not-yet-selected
    assert np.allclose(m.soft.numpy()[first >= 0], first[first >= 0])
    assert (m.soft.numpy() >= 0).sum() == 2 * (first >= 0).sum()


def ll_reference(z, y, k, mode):
    p = sig(z)
    bce = -(np.where(y == 1, np.log(p), np.log(1 - p)))
    unobs = y == 0
    loss = bce.copy()
    if k > 0:
        thr = np.sort(bce[unobs])[::-1][min(k, unobs.sum()) - 1]
        mask = unobs & (bce >= thr)
        loss[mask] = 0.0 if mode == "r" else -np.log(p[mask])
    return loss.mean()


@pytest.mark.parametrize("mode", ["r", "ct"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.2, 0.5])
def test_ll_loss_against_its_formula(batch, mode, rate):
    z, y, _ = batch
    k = math.ceil(z.size * rate)
    assert ll_loss(T(z), T(y, torch.long), rate=rate, mode=mode).item() == pytest.approx(
        ll_reference(z, y, k, mode), abs=1e-9)


def test_ll_schedules():
    assert ll_rate("r", 1, 0.2) == 0.0 and ll_rate("r", 2, 0.2) == pytest.approx(0.002)
    assert ll_rate("ct", 5, 0.5) == pytest.approx(0.02) and ll_rate("cp", 1, 0.3) == 0.0
    assert ll_rate("cp", 2, 0.3) == ll_rate("cp", 9, 0.3) == pytest.approx(0.003)


def test_ll_cp_corrections_are_permanent(batch):
    z, y, _ = batch
    params = dict(DEFAULTS["loss"], ll_delta_rel=10.0)  # 10% of the entries per batch
    m = build_method("ll-cp", params, run_info(y))
    m.loss(T(z), T(y, torch.long), rows=np.arange(6), epoch=1)
    assert not m.corrected.any()  # epoch 1: nothing
    m.loss(T(z), T(y, torch.long), rows=np.arange(6), epoch=2)
    k = math.ceil(z.size * 0.1)
    assert int(m.corrected.sum()) == k and not (m.corrected.numpy() & (y == 1)).any()
    # later batches treat them as observed positives
    y2 = np.where(m.corrected.numpy(), 1, y)
    later = m.loss(T(z), T(y, torch.long), rows=np.arange(6), epoch=3).item()
    assert later == pytest.approx(ll_reference(z, y2, k, "ct"), abs=1e-9)


def test_boostlu_pooling_matches_a_manual_cam():
    from aevlp.stage_two.models import build_model
    torch.manual_seed(0)
    model = build_model("small-cnn", 5, weights="none").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone[:-2](x)  # [3, 128, 4, 4]
        cam = np.einsum("bdhw,cd->bchw", feats.numpy(), model.head.weight.numpy()) + \
            model.head.bias.numpy()[None, :, None, None]
        manual = np.where(cam > 0, 5 * cam, cam).mean((2, 3))
        assert np.allclose(model.boosted(x, 5.0).numpy(), manual, atol=1e-5)
        assert torch.allclose(model.boosted(x, 1.0), model(x), atol=1e-5)  # α = 1: plain average pooling
    assert torch.equal(boost_lu(torch.tensor([-2.0, 0.0, 3.0]), 4.0), torch.tensor([-2.0, 0.0, 12.0]))


def test_vlpl_takes_global_view_pseudo_labels():
    from aevlp.specs import DampSpec
    spec = LOSSES["vlpl"]
    damp = DampSpec(source="damp", temperature=0.05, eta=0.3, threshold=0.5, top_k=3, negative_ratio=0.2,
                    mode="paper")
    mine = spec.pseudo_labels(damp, dict(DEFAULTS["loss"]))
    assert (mine.source, mine.threshold, mine.temperature, mine.negative_ratio) == ("global-plain", 0.3, 0.01, 0.0)


def test_epr_is_unweighted_whatever_gprs_reg_the_pipeline_holds():
    """Cole et al. add the expected-positive regulariser unweighted; the benchmark pipelines' `reg` is GPR's."""
    from aevlp.config import load_config
    z = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -2.0]], dtype=torch.float64)
    y = torch.tensor([[1, 0, 0], [0, 1, 0]])
    for name in ("voc", "coco", "cub"):
        params = load_config(name)["loss"]
        assert params["reg"] < 1  # GPR's weight: 0.05, 0.001, 0.01
        got = build_loss("epr", dict(params, expected_pos=1.5))(z, y).item()
        p = sig(z.numpy())
        ref = np.where(y.numpy() == 1, -np.log(p + 1e-5), 0).mean() + (p.sum(1).mean() - 1.5) ** 2 / 9
        assert got == pytest.approx(ref, abs=1e-12)


def test_em_pl_gives_negative_pseudo_labels_no_loss():
    """VLPL's EM_PL leaves -1 pseudo-labels without a loss (their term is commented out in its code)."""
    from aevlp.losses import em_pl_loss
    z = torch.tensor([[0.7, -0.4, 1.2]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 0, 0]])
    loss = em_pl_loss(z, y, torch.tensor([[0, -1, 1]]), em_alpha=0.2, pl_weight=0.7, rho=0.9)
    p = sig(z.detach().numpy())[0]
    ref = (-np.log(p[0] + 1e-5) + 0.0 + 0.7 * (0.9 * -np.log(p[2] + 1e-5) + 0.1 * -np.log(1 - p[2] + 1e-5))) / 3
    assert loss.item() == pytest.approx(ref, abs=1e-12)
    loss.backward()
    assert z.grad[0, 1].item() == 0.0  # the negative pseudo-label's entry gets no gradient at all


def test_large_loss_schemes_take_their_own_delta_rel():
    y = np.zeros((4, 5), int)
    y[:, 0] = 1
    for name, own in (("ll-r", 0.5), ("ll-ct", 0.2), ("ll-cp", 0.1), ("boostlu", 0.5)):
        assert build_method(name, dict(DEFAULTS["loss"], ll_delta_rel=0.0), run_info(y)).delta == own
        assert build_method(name, dict(DEFAULTS["loss"], ll_delta_rel=0.3), run_info(y)).delta == 0.3  # given wins


def test_the_benchmark_pipelines_hold_the_methods_table_and_the_docs_show_it():
    """Every per-dataset value of aevlp/losses/recipes.py is the one its benchmark pipeline binds, and
    docs/training.md shows the table as generated."""
    from pathlib import Path

    from aevlp.config import load_config
    from aevlp.losses import recipes
    root = Path(__file__).resolve().parent.parent
    for pipeline, dataset in zip(("voc", "coco", "nus", "cub"), recipes.BENCHMARKS):
        loss = load_config(pipeline)["loss"]
        for key, row in recipes.LOSS_VALUES.items():
            assert loss[key] == row.on(dataset), (pipeline, key, loss[key], row.on(dataset))
        assert recipes.pipeline_block(dataset) in (root / "pipelines" / f"{pipeline}.toml").read_text()
    docs = (root / "docs" / "training.md").read_text()
    assert recipes.recipe_tables() in docs, "docs/training.md is stale: run `make docs`"
    # spot checks against the official code, written out here
    assert (recipes.LOSS_VALUES["em_alpha"].values, recipes.LOSS_VALUES["apl_beta"].values) == \
        ((0.2, 0.1, 0.1, 0.01), (0.02, 0.9, 0.2, 0.4))
    assert {m: v["ll_delta_rel"][0] for m, v in recipes.SCHEME_DEFAULTS.items()} == \
        {"ll-r": 0.5, "ll-ct": 0.2, "ll-cp": 0.1, "boostlu": 0.5}


def test_the_official_recipe_is_each_methods_own():
    from aevlp.config import load_config, updated
    from aevlp.errors import ConfigError
    from aevlp.stage_two.plan import as_trained
    official = {"train": {"recipe": "official"}}
    em_cub = as_trained(updated(load_config("cub", ['loss.name="em-apl"']), official))["train"]
    assert (em_cub["epochs"], em_cub["lr"], em_cub["lr_mult"], em_cub["batch_size"], em_cub["early_stop"]) == \
        (10, 1e-4, 1.0, 8, "first-drop")
    vlpl = as_trained(updated(load_config("coco", ['loss.name="vlpl"']), official))["train"]
    assert (vlpl["epochs"], vlpl["lr"], vlpl["lr_mult"], vlpl["batch_size"]) == (10, 1e-5, 1.0, 8)
    role = as_trained(updated(load_config("voc", ['loss.name="role"']), official))["train"]
    assert (role["epochs"], role["linear_init"], role["linear_init_lr"]) == (35, 25, 1e-3)
    mime = as_trained(updated(load_config("nus", ['loss.name="mime"']), official))["train"]
    assert (mime["optimizer"], mime["lr"], mime["batch_size"]) == ("adamax", 1e-4, 16)
    gpr = load_config("voc")
    assert as_trained(updated(gpr, official))["train"] == dict(as_trained(gpr)["train"], recipe="official")
    shared = as_trained(load_config("cub", ['loss.name="em-apl"']))["train"]
    assert (shared["epochs"], shared["lr_mult"]) == (10, 10.0)  # the shared recipe stays the pipeline's
    with pytest.raises(ConfigError, match="defined on the benchmark datasets"):
        as_trained(updated(load_config("demo", ['loss.name="em"']), official))
