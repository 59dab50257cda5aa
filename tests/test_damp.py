import pytest
import torch

from aevlp.damp import aggregate, select, select_global
from aevlp.errors import ConfigError
from aevlp.stage_one.relation import TextGCN, build_adjacency, refine_text_features, relation_from_text

TAU = 0.05


def sims_from_softmax(s, tau=TAU):
    """Raw similarities whose softmax at temperature tau is exactly s."""
    return tau * torch.log(torch.as_tensor(s, dtype=torch.float64))


LOCAL = [[.7, .05, .15, .1], [.1, .6, .2, .1], [.4, .4, .1, .1], [.3, .5, .01, .19]]
GLOBAL = [.6, .3, .05, .05]


def golden():
    g = sims_from_softmax([GLOBAL])
    loc = sims_from_softmax([LOCAL])
    obs = torch.tensor([[1, 0, 0, 0]])
    return aggregate(g, loc, obs, temperature=TAU, eta=0.3)


def test_golden_scores():
    f, g = golden()
    assert f[0].tolist() == pytest.approx([.65, .45, .03, .075], abs=1e-6)
    assert g[0].tolist() == pytest.approx([.4875, .34375, .0825, .08625], abs=1e-6)


def test_golden_selection():
    f, g = golden()
    kw = dict(top_k=3, negative_ratio=0.5)
    assert select(f, g, threshold=0.5, **kw, negatives=False).tolist() == [[1, 0, 0, 0]]
    assert select(f, g, threshold=0.4, **kw, negatives=False).tolist() == [[1, 1, 0, 0]]
    assert select(f, g, threshold=0.4, **kw).tolist() == [[1, 1, -1, -1]]


def test_eta_zero_uses_alpha_and_identical_views_give_global(rng):
    g = torch.randn(5, 7, dtype=torch.float64) * 0.1
    loc = torch.randn(5, 4, 7, dtype=torch.float64) * 0.1
    obs = torch.zeros(5, 7)
    obs[:, 0] = 1
    f, _ = aggregate(g, loc, obs, temperature=0.01, eta=0.0)
    sg = torch.softmax(g / 0.01, -1)
    alpha = torch.softmax(loc / 0.01, -1).amax(1)
    assert torch.allclose(f, (sg + alpha) / 2)
    f2, g2 = aggregate(g, g.unsqueeze(1).repeat(1, 4, 1), obs, temperature=0.01, eta=0.3)
    assert torch.allclose(f2, sg) and torch.allclose(g2, sg)


def test_aggregate_is_per_image():
    """Batched result equals image-by-image results (no leakage across the batch)."""
    torch.manual_seed(1)
    g, loc = torch.randn(6, 5) * .1, torch.randn(6, 9, 5) * .1
    obs = torch.nn.functional.one_hot(torch.arange(6) % 5, 5)
    f, ng = aggregate(g, loc, obs, temperature=0.02, eta=0.3)
    for i in range(6):
        fi, gi = aggregate(g[i:i + 1], loc[i:i + 1], obs[i:i + 1], temperature=0.02, eta=0.3)
        assert torch.allclose(fi, f[i:i + 1]) and torch.allclose(gi, ng[i:i + 1])


def test_select_invariants():
    torch.manual_seed(0)
    f, g = torch.rand(50, 20), torch.rand(50, 20)
    for k in (1, 3, 5):
        for th in (0.1, 0.5, 0.9):
            z = select(f, g, top_k=k, threshold=th, negative_ratio=0.2)
            assert set(z.unique().tolist()) <= {-1, 0, 1}
            assert torch.all((z == 1).sum(1) <= k)
            assert torch.all(f[z == 1] >= th)
            assert torch.all((z == -1).sum(1) <= 4)
            z_off = select(f, g, top_k=k, threshold=th, negative_ratio=0.2, negatives=False)
            # official vs paper mode: the only difference is the negatives
            assert torch.equal(z_off, torch.where(z == -1, torch.zeros_like(z), z))
            z_all_pos = select(f, g, top_k=k, threshold=th, negative_ratio=0.0)
            pos_cands = z_all_pos == 1
            neg = z == -1
            assert torch.equal(z == 1, pos_cands & ~neg)  # disjoint: negatives win
    z1 = select(f, g, top_k=3, threshold=0.3, negative_ratio=0.0)
    z2 = select(f, g, top_k=3, threshold=0.6, negative_ratio=0.0)
    z3 = select(f, g, top_k=2, threshold=0.3, negative_ratio=0.0)
    assert torch.all((z2 == 1) <= (z1 == 1)) and torch.all((z3 == 1) <= (z1 == 1))


def test_exactly_floor_ratio_negative_candidates():
    f = torch.zeros(3, 20)  # no positive passes threshold
    g = torch.rand(3, 20)
    for ratio, m in ((0.2, 4), (0.3, 6), (0.0, 0), (0.99, 19)):
        z = select(f, g, top_k=3, threshold=0.5, negative_ratio=ratio)
        assert torch.all((z == -1).sum(1) == m)
        lowest = torch.topk(g, m, largest=False).indices if m else torch.zeros(3, 0, dtype=torch.long)
        assert torch.all(z.gather(1, lowest) == -1)


def test_observed_positive_overrides():
    f, g = torch.zeros(1, 4), torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    z = select(f, g, top_k=1, threshold=0.5, negative_ratio=0.5, observed=torch.tensor([[1, 0, 0, 0]]))
    assert z.tolist() == [[1, -1, 0, 0]]


def test_global_only():
    g = sims_from_softmax([[.5, .35, .1, .05]], tau=0.01)
    z = select_global(g, temperature=0.01, threshold=0.3, negative_ratio=0.25)
    assert z.tolist() == [[1, 1, 0, -1]]
    uniform = torch.zeros(1, 4)  # softmax is exactly 0.25 everywhere
    assert select_global(uniform, threshold=0.25).tolist() == [[0, 0, 0, 0]]  # strict >, as VLPL
    assert select_global(uniform, threshold=0.2499).tolist() == [[1, 1, 1, 1]]


@pytest.mark.parametrize("kw", [dict(top_k=0), dict(top_k=5), dict(negative_ratio=1.0), dict(negative_ratio=-0.1)])
def test_select_validation(kw):
    args = dict(top_k=2, threshold=0.5, negative_ratio=0.2) | kw
    with pytest.raises(ConfigError):
        select(torch.rand(2, 4), torch.rand(2, 4), **args)


def test_aggregate_validation():
    with pytest.raises(ConfigError, match="temperature"):
        aggregate(torch.rand(2, 4), torch.rand(2, 3, 4), torch.zeros(2, 4), temperature=0.0, eta=0.1)
    with pytest.raises(ValueError):
        aggregate(torch.rand(2, 4), torch.rand(2, 3, 5), torch.zeros(2, 4), temperature=0.1, eta=0.1)
    with pytest.raises(ValueError):
        aggregate(torch.rand(2, 4), torch.rand(2, 3, 4), torch.zeros(3, 4), temperature=0.1, eta=0.1)


def test_adjacency_properties():
    torch.manual_seed(0)
    t = torch.randn(20, 16) + 1.5  # all cosines positive, like real CLIP class-name relations
    r = relation_from_text(t)
    assert r.min() > 0
    assert torch.allclose(r, r.T, atol=1e-6) and torch.allclose(r.diagonal(), torch.ones(20))
    a = build_adjacency(r, sparse_topk=8, reweight_p=0.2)
    assert torch.all(a >= 0)
    assert torch.allclose(a.diagonal(), torch.full((20,), 0.8))
    assert torch.allclose(a.sum(1), torch.ones(20))
    off = a.clone().fill_diagonal_(0)
    assert torch.all((off > 0).sum(1) == 7)


def test_negative_similarities_are_no_relation():
    r = torch.tensor([[1.0, -0.5, 0.5], [-0.5, 1.0, -0.2], [0.5, -0.2, 1.0]])
    a = build_adjacency(r, sparse_topk=3, reweight_p=0.2)
    assert torch.all(a >= 0) and torch.allclose(a.sum(1), torch.ones(3))
    assert a[0].tolist() == pytest.approx([0.8, 0.0, 0.2])
    assert a[1].tolist() == pytest.approx([0.0, 1.0, 0.0])  # isolated class keeps its own features


def test_gcn_zero_weights_and_frozen():
    torch.manual_seed(0)
    t0 = torch.randn(6, 8)
    gcn = TextGCN(8, seed=3)
    for w in gcn.weights:
        w.data.zero_()
    a = build_adjacency(relation_from_text(t0), 3)
    assert torch.allclose(gcn(t0, a), torch.nn.functional.normalize(t0, dim=-1))
    assert all(not p.requires_grad for p in TextGCN(8).parameters())


def test_gcn_seeded_and_switchable():
    torch.manual_seed(0)
    t0 = torch.randn(6, 8)
    a1 = refine_text_features(t0, sparse_topk=4, seed=1)
    assert torch.allclose(a1, refine_text_features(t0, sparse_topk=4, seed=1))
    assert not torch.allclose(a1, refine_text_features(t0, sparse_topk=4, seed=2))
    assert torch.allclose(a1.norm(dim=1), torch.ones(6))
    assert torch.allclose(refine_text_features(t0, sparse_topk=4, enabled=False),
                          torch.nn.functional.normalize(t0, dim=-1))
