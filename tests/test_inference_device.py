"""One device rule for everything that runs a trained model (`aevlp.device.inference`): eval, predict, review,
refine (the student's scores) and the teacher row resolve their device through it, take --device and
--batch-size, and give the same numbers as before on the CPU."""
import inspect
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_CNN, invoke, make_photo_dataset, tiny_cfg

import aevlp.device as device_module


@pytest.fixture(scope="module")
def run(tiny_clip, tmp_path_factory):
    from aevlp.stage_one.pseudolabel import run_pseudolabel
    from aevlp.stage_two.train import run_train

    d = tmp_path_factory.mktemp("infer")
    root = make_photo_dataset(d / "voc", n_train=24, n_test=6)
    cfg = tiny_cfg(tiny_clip, root, d / "c.h5", 'cache.store_embeddings="all"', *SMALL_CNN, "train.epochs=1")
    run_pseudolabel(cfg, progress=False)
    run_train(cfg, run_dir=d / "run", progress=False, echo=None)
    return {"d": d, "run": d / "run", "cache": d / "c.h5", "root": root}


@pytest.fixture
def spy(monkeypatch):
    """Every device string the rule resolves, in order."""
    seen = []
    real = device_module.resolve_device

    def record(device, *setting):
        seen.append(device)
        return real(device, *setting)
    monkeypatch.setattr(device_module, "resolve_device", record)
    return seen


def test_eval_and_predict_resolve_their_device_through_the_rule(run, spy, tmp_path):
    r = invoke("eval", run["run"], "--device", "cpu", "--batch-size", 3)
    assert r.exit_code == 0 and "test mAP" in r.output, r.output
    assert spy == ["cpu"]
    images = run["root"] / "VOCdevkit" / "VOC2012" / "JPEGImages"
    r = invoke("predict", run["run"], images, "--device", "cpu", "--batch-size", 5, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    assert spy == ["cpu", "cpu"]
    r = invoke("predict", run["run"], images, "--device", "cuda:7", "--out", tmp_path / "q.csv")
    assert r.exit_code != 0 and "CUDA is not available" in r.output and "Traceback" not in r.output


def test_review_and_refine_score_through_the_rule(run, spy, tmp_path):
    r = invoke("review", run["cache"], run["run"], "--out", tmp_path / "site", "--per-class", 4, "--device", "cpu",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert spy[0] == "cpu"  # the runs' test scores and the teacher row
    spy.clear()
    r = invoke("refine", run["run"], "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "cpu" in spy  # the student's scores (and the round's training, train.device = cpu)


def test_batch_size_and_workers_do_not_change_the_numbers(run):
    """The same probabilities whatever the batch size (the loader's workers start past one batch)."""
    from aevlp.device import inference
    from aevlp.stage_two.evaluate import checkpoint_scores

    images = sorted((run["root"] / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("val*.jpg"))
    one = checkpoint_scores(run["run"], images, inference("cpu", 1))
    many = checkpoint_scores(run["run"], images, inference("cpu", 64))
    assert np.allclose(one, many, atol=1e-6)


def test_no_model_runs_on_a_hard_coded_cpu():
    """The modules that run a trained model name no device of their own: the rule decides."""
    import aevlp.stage_one.teacher
    import aevlp.stage_two.evaluate
    import aevlp.stage_two.refine
    import aevlp.tools.review

    for mod in (aevlp.stage_two.evaluate, aevlp.stage_two.refine, aevlp.tools.review, aevlp.stage_one.teacher):
        assert 'torch.device("cpu")' not in inspect.getsource(mod), mod.__name__
    assert Path(aevlp.stage_two.evaluate.__file__).exists()
