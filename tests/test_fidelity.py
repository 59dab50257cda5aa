"""The comparison methods' second fidelity round (docs/training.md, "Where aevlp departs from the official
code"): MIME's and SMILE's transformer and backbone as the MIME code builds them, Cole et al.'s linear phase and
learning-rate multiplier, Kim et al.'s early stop. Counts and values are computed here from the official
structure, written out, not read from the code under test."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn


def official_transformer_params(d: int, c: int, ff: int, encoders: int = 1, decoders: int = 2) -> int:
    """Query2Label's transformer (DETR's layers, the decoder's self-attention removed), by hand."""
    attn = 4 * d * d + 4 * d  # in_proj (3 d x d + 3 d) and out_proj (d x d + d)
    ffn = d * ff + ff + ff * d + d
    norm = 2 * d
    encoder = attn + ffn + 2 * norm  # self-attention, feed-forward, norm1, norm2
    decoder = attn + ffn + 2 * norm  # cross-attention only, feed-forward, norm2, norm3
    return encoders * encoder + decoders * decoder + norm + c * d  # + the decoder's final norm, the class queries


@pytest.mark.parametrize("d,c", [(256, 20), (128, 80)])
def test_the_query_transformer_is_the_official_one_layer_by_layer(d, c):
    from aevlp.stage_two.heads import QueryTransformer

    torch.manual_seed(0)
    t = QueryTransformer(d, c)
    assert sum(p.numel() for p in t.parameters()) == official_transformer_params(d, c, 4 * d)
    assert len(t.encoder) == 1 and len(t.decoder) == 2
    for layer in t.decoder:  # no self-attention among the class queries, nor its norm and dropout
        assert not hasattr(layer, "self_attn") and not hasattr(layer, "norm1") and not hasattr(layer, "dropout1")
        assert sum(isinstance(m, nn.MultiheadAttention) for m in layer.modules()) == 1
    # xavier-uniform on every weight matrix of the layers: linear2 [d, 4d] reaches its bound √(6 / 5d), which
    # torch's default for a Linear (1/√(4d)) stays well below
    w = t.encoder[0].linear2.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound and 1 / (4 * d) ** 0.5 < 0.6 * bound
    assert torch.allclose(w.std(), torch.tensor(bound / 3 ** 0.5), rtol=0.02)


def test_the_decoder_starts_from_zero_and_reads_the_positions_at_every_attention():
    """With the positions zeroed only in the keys of the decoder's cross-attention, the output changes: the
    positions reach every attention, not only the encoder's input. The class queries are not the target: the
    decoder's first input is 0, so two queries that differ only in sign give different outputs."""
    from aevlp.stage_two.heads import QueryTransformer

    torch.manual_seed(0)
    t = QueryTransformer(32, 3).eval()
    fmap = torch.randn(2, 32, 4, 4)
    base = t(fmap)
    layer = t.decoder[0]
    real = layer.forward

    def no_key_positions(tgt, memory, pos, query):
        return real(tgt, memory, torch.zeros_like(pos), query)

    layer.forward = no_key_positions
    assert not torch.allclose(t(fmap), base, atol=1e-4)
    layer.forward = real
    calls = []
    orig = t.decoder[0].multihead_attn.forward
    t.decoder[0].multihead_attn.forward = lambda q, k, v, **kw: calls.append(q.detach().clone()) or orig(q, k, v, **kw)
    t(fmap)
    assert torch.allclose(calls[0], t.queries.weight.expand(2, -1, -1))  # target 0 + the queries


def test_mime_and_smile_train_the_backbone_as_the_official_code():
    """Every BatchNorm frozen (its statistics and affine values as loaded), conv1, bn1 and layer1 not trained;
    what trains in the backbone is layer2-4's convolutions, counted here from a plain torchvision ResNet-50."""
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    from aevlp.losses import build_method
    from aevlp.losses.method import RunInfo
    from aevlp.stage_two.models import build_model

    plain = torchvision.models.resnet50(weights=None)
    want = sum(m.weight.numel() for n, m in plain.named_modules()
               if isinstance(m, nn.Conv2d) and n.startswith(("layer2", "layer3", "layer4")))
    for name in ("mime", "smile"):
        core = build_model("resnet50", 20, weights="none")
        core.backbone.bn1.running_mean.fill_(0.25)  # as loaded weights would set it
        run = RunInfo(num_rows=4, num_classes=20, observed=torch.zeros(4, 20).numpy(), seed=0, epochs=10, lr=1e-4)
        method = build_method(name, {**_params()}, run)
        method.prepare_model(core)
        bb = core.backbone
        assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
        assert sum(isinstance(m, FrozenBatchNorm2d) for m in bb.modules()) == 53  # ResNet-50's 53 BatchNorms
        assert torch.all(bb.bn1.running_mean == 0.25)
        assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == want
        assert core.frozen == {n for n, _ in bb.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
        from aevlp.stage_two.train import _phase  # the loop's per-epoch switch keeps them frozen
        opt = torch.optim.Adam([{"params": bb.parameters(), "lr": 1e-4}, {"params": core.head.parameters()}])
        t = SimpleNamespace(linear_init=0, linear_init_lr=0.0, lr=1e-4, lr_mult=10.0)
        _phase(SimpleNamespace(t=t, core=core, opt=opt, model=core), linear=False)
        assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == want


def _params() -> dict:
    from aevlp.settings import LossParams, declared

    return {k: f.default for k, f in declared(LossParams).items()}


def test_a_small_cnn_trained_from_scratch_keeps_its_batchnorm():
    from aevlp.stage_two.heads import official_backbone
    from aevlp.stage_two.models import build_model

    core = build_model("small-cnn", 5)
    assert official_backbone(core.backbone) == [] and any(isinstance(m, nn.BatchNorm2d) for m in core.modules())


def test_roles_estimator_learns_at_the_phases_lr_times_its_multiplier():
    """Cole et al.'s train.py: g (the label estimator) at lr_mult × lr, lr the phase's: 1e-3 × 10 = 1e-2 on the
    frozen features, 1e-5 × 10 = 1e-4 end to end. The head: the linear phase's lr, then lr × train.lr_mult."""
    from aevlp.losses import build_method
    from aevlp.losses.method import RunInfo
    from aevlp.stage_two.models import build_model
    from aevlp.stage_two.train import _phase

    core = build_model("small-cnn", 3)
    run = RunInfo(num_rows=4, num_classes=3, observed=torch.zeros(4, 3).numpy(), seed=0, epochs=10, lr=1e-5)
    role = build_method("role", {**_params(), "role_lr_mult": 10.0}, run)
    opt = torch.optim.Adam([{"params": core.backbone.parameters(), "lr": 1e-5},
                            {"params": core.head.parameters(), "lr": 1e-5}, *role.param_groups()])
    t = SimpleNamespace(linear_init=25, linear_init_lr=1e-3, lr=1e-5, lr_mult=1.0)
    r = SimpleNamespace(t=t, core=core, opt=opt, model=core)
    _phase(r, linear=True)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-3, 1e-2])
    assert not any(p.requires_grad for p in core.backbone.parameters()) and not core.backbone.training
    _phase(r, linear=False)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5, 1e-4])
    assert all(p.requires_grad for p in core.backbone.parameters()) and core.backbone.training


def test_the_official_recipes_second_round():
    from aevlp.config import load_config, updated
    from aevlp.errors import ConfigError
    from aevlp.losses import recipes
    from aevlp.stage_two.plan import as_trained

    official = {"train": {"recipe": "official"}}

    def trained(pipeline, loss):
        return as_trained(updated(load_config(pipeline, [f'loss.name="{loss}"']), official))["train"]

    # Cole et al. train.py: f = backbone + linear classifier at lr; lr_mult (10) is g's, ROLE's estimator
    for loss in ("an", "an-ls", "wan", "epr", "iun", "iu", "role"):
        assert trained("voc", loss)["lr_mult"] == 1.0, loss
    # Kim et al. (LargeLossMatters) train.py: `elif bestmap_val - map_val > 3: break`; config.py bsize 16
    for loss in ("ll-r", "ll-ct", "ll-cp", "boostlu"):
        t = trained("coco", loss)
        assert (t["early_stop"], t["max_drop"], t["batch_size"], t["lr"], t["lr_mult"]) == ("gr", 3.0, 16, 1e-5, 10.0)
    with pytest.raises(ConfigError, match="no official recipe is recorded for 'nope'"):
        recipes.official_recipe("nope", "voc")
    assert recipes.official_recipe("gr", "voc") == {} and recipes.official_recipe("an-pl", "coco") == {}


def test_an_pl_takes_the_aevlp_codes_epsilon():
    """The AEVLP code's losses.py AN_PL_loss: −log(p + 1e-7) on positives and pseudo-positives, −log(1 − p + 1e-7)
    elsewhere; at p = 0 on a positive that is −log(1e-7) = 16.118, where Cole's 1e-5 would give 11.513."""
    from aevlp.losses import build_loss

    loss = build_loss("an-pl", {})
    logits = torch.tensor([[-1000.0, 0.0]])
    got = loss(logits, torch.tensor([[1, 0]]), pseudo=torch.tensor([[0, 0]]))
    assert got.item() == pytest.approx((16.118095651 + 0.693147) / 2, abs=1e-4)


def test_an_official_recipe_carried_to_another_pipeline_keeps_its_ratios_to_aevlps():
    """train.recipe_as = voc off the benchmarks: each lr, batch and epoch count is the VOC official value times this
    pipeline's over pipelines/voc.toml's (lr 1e-5, batch 8, epochs 8, AEVLP's); the rest as the authors set it."""
    from aevlp.config import load_config
    from aevlp.errors import ConfigError
    from aevlp.stage_two.plan import as_trained

    def trained(loss, *more):
        sets = [f'loss.name="{loss}"', 'train.recipe="official"', *more]
        return as_trained(load_config("pipelines/demo.toml", sets))["train"]

    here = ['train.recipe_as="voc"', "train.lr=3e-4", "train.batch_size=32", "train.epochs=4"]
    role = trained("role", *here)  # Cole: 25 linear epochs at 1e-3, then 10 end to end (35), batch 8
    assert (role["linear_init"], role["epochs"], role["batch_size"]) == (round(25 * 4 / 8), round(35 * 4 / 8), 32)
    assert role["linear_init_lr"] == pytest.approx(1e-3 * 3e-4 / 1e-5) and role["lr_mult"] == 1.0
    mime = trained("mime", *here)  # train_mime.py: lr 1e-4, Adamax, batch 32 on VOC, the heads at x 10
    assert mime["lr"] == pytest.approx(1e-4 * 30) and mime["batch_size"] == 128 and mime["epochs"] == 5
    assert (mime["optimizer"], mime["lr_mult"]) == ("adamax", 10.0)
    gr = trained("gr", *here)  # GR's official recipe is the pipeline's own: nothing changes
    assert (gr["lr"], gr["batch_size"], gr["epochs"], gr["lr_mult"]) == (3e-4, 32, 4, 10.0)
    with pytest.raises(ConfigError, match="train.recipe_as"):  # off the benchmarks without it: named as the fix
        trained("an")
    with pytest.raises(ConfigError, match="applies with"):
        as_trained(load_config("pipelines/demo.toml", ['train.recipe_as="voc"']))


def test_a_carried_recipe_applied_twice_changes_nothing():
    """A run's config.toml holds the recipe as trained; `aevlp run`, resume and the plan apply it again: the carried
    values must not be scaled twice (recipe_base records what they were scaled from)."""
    from aevlp.config import load_config
    from aevlp.stage_two.plan import as_trained

    for loss in ("an", "role", "mime", "em", "gr"):
        once = as_trained(load_config("pipelines/demo.toml", [f'loss.name="{loss}"', 'train.recipe="official"',
                                                              'train.recipe_as="voc"']))
        assert as_trained(once) == once, loss
        assert once["train"]["recipe_base"] == "0.0003/32/8" and once["train"]["epochs"] in (8, 10, 35)
