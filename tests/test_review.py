"""`aevlp review`: a static site read back by a real browser (headless Chromium, Debian's package, which
`make test` installs), and the Label Studio / FiftyOne exports, and a reviewed export read back."""
import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, make_photo_dataset, tiny_cfg

from aevlp.cache import Cache
from aevlp.stage_one.pseudolabel import run_pseudolabel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dom(page: Path, query: str = "", profile: Path | None = None) -> str:
    """The page's DOM after its scripts ran, as headless Chromium renders it from the file system."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (`make data` installs Debian's package)")
    url = page.resolve().as_uri() + (f"?{query}" if query else "")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile or page.parent / '.chromium'}", "--virtual-time-budget=4000", "--dump-dom"]
    r = subprocess.run([CHROMIUM, *flags, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def site(tiny_clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("review")
    root = make_photo_dataset(d / "voc", n_train=30, n_test=8)
    cache = d / "c.h5"
    cfg = tiny_cfg(tiny_clip, root, cache, 'cache.store_embeddings="all"', "damp.temperature=0.05",
                   "damp.threshold=0.06")
    run_pseudolabel(cfg, progress=False)
    pipeline = d / "p.toml"
    from aevlp.config import dump_config
    pipeline.write_text(dump_config(cfg))
    r = invoke("review", cache, "--out", d / "site", "--config", pipeline, "--per-class", 8, "--no-progress")
    assert r.exit_code == 0 and "wrote" in r.output, r.output
    return {"dir": d, "cache": cache, "site": d / "site", "cfg": cfg, "pipeline": pipeline, "root": root}


def expected_counts(cache: Path, cfg: dict, k: int, theta: float) -> dict:
    """What stage two selects for class k at θ, from the cache's similarities (round-averaged DAMP score,
    the image's top-k), computed here with numpy."""
    with Cache(cache) as c:
        sims = c.f["sims"][:].astype(np.float64)  # [R, N, V, C]
        obs, truth, bad = c.array("observed"), c.array("labels"), c.f["bad"][:]
    t, top_k = cfg["damp"]["temperature"], cfg["damp"]["top_k"]
    soft = np.exp(sims / t - (sims / t).max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    f = (0.5 * (soft[:, :, 0] + soft[:, :, 1:].max(2))).mean(0)  # eta 0.3 gate: the test data's alpha beats it
    rank = (-f).argsort(1).argsort(1)
    unknown = (obs[:, k] != 1) & ~bad
    picked = unknown & (f[:, k] >= theta) & (rank[:, k] < top_k)
    tp = int((picked & (truth[:, k] == 1)).sum())
    return {"observed": int(((obs[:, k] == 1) & ~bad).sum()), "positive": int(picked.sum()),
            "precision": round(100 * tp / max(int(picked.sum()), 1), 1)}


def test_a_class_page_shows_the_caches_counts_and_the_slider_changes_them(site):
    page = site["site"] / "class-003.html"
    theta0 = float(site["cfg"]["damp"]["threshold"])
    for theta in (theta0, 0.3):
        text = dom(page, "" if theta == theta0 else f"theta.3={theta}")
        got = dict(re.findall(r'id="count-([a-z0-9]+)">([^<]*)<', text))
        want = expected_counts(site["cache"], site["cfg"], 3, theta)
        assert int(got["observed"]) == want["observed"] and int(got["positive"]) == want["positive"], (got, want)
        assert float(got["precision"]) == pytest.approx(want["precision"], abs=0.05)
        marks = re.findall(r'data-status="([a-z]+)"', text)
        assert len(marks) == 8 and set(marks) <= {"observed", "positive", "negative", "unknown"}
    assert 'class="tile"' in text and "thumbs/" in text


def test_the_downloaded_thresholds_change_stage_twos_pseudo_labels(site, tmp_path):
    from aevlp.specs import Specs
    from aevlp.stage_two.labeler import PseudoLabeler
    cfg = json.loads(json.dumps(site["cfg"]))
    with Cache(site["cache"]) as c:
        obs = c.array("observed")
        base = PseudoLabeler(c, Specs.of(cfg).damp, obs).for_epoch(1)
    new = lambda z, k: int(((z[:, k] == 1) & (obs[:, k] != 1)).sum())  # noqa: E731
    off = int(np.argmax([new(base, k) for k in range(20)]))  # the class with most pseudo-positives: switched off
    low = (off + 1) % 20
    text = dom(site["site"] / "index.html", f"export=1&theta.{off}=1.01&theta.{low}=0.0")
    csv = re.search(r'<pre id="thresholds-csv">(.*?)</pre>', text, flags=re.S).group(1)
    (tmp_path / "t.csv").write_text(csv.replace("&quot;", '"'))
    cfg["damp"]["class_thresholds"] = str(tmp_path / "t.csv")
    with Cache(site["cache"]) as c:
        mine = PseudoLabeler(c, Specs.of(cfg).damp, obs).for_epoch(1)
    assert new(mine, off) == 0 < new(base, off)  # θ 1.01: no pseudo-positive of that class any more
    assert new(mine, low) >= new(base, low)  # θ 0: every top-k pick of the other
    changed = [k for k in range(20) if k not in (off, low) and not np.array_equal(mine[:, k], base[:, k])]
    assert changed == []  # the rest kept the global θ


def test_label_studio_and_fiftyone_exports_and_a_review_back(site, tmp_path):
    r = invoke("cache", "export", site["cache"], "--format", "label-studio", "--out", tmp_path / "ls" / "tasks.json")
    assert r.exit_code == 0, r.output
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    config = (tmp_path / "ls" / "label_config.xml").read_text()
    from aevlp.config import config_for_cache
    from aevlp.stage_two.labeler import labeler_for
    with Cache(site["cache"]) as c:  # the labels a training run with the cache's own pipeline selects in round 0
        names, ids, pseudo = c.classnames(), c.image_ids(), labeler_for(c, config_for_cache(c)).for_epoch(1)
    assert 'choice="multiple"' in config and all(f'<Choice value="{n}"/>' in config for n in names)
    assert [t["data"]["aevlp_image"] for t in tasks] == ids
    for t, row in zip(tasks, pseudo):
        assert t["predictions"][0]["result"][0]["value"]["choices"] == [n for n, z in zip(names, row) if z == 1]
        assert urllib.parse.parse_qs(t["data"]["image"].split("?")[1])["d"] == [t["data"]["aevlp_image"]]
    r = invoke("cache", "export", site["cache"], "--format", "fiftyone", "--out", tmp_path / "fo")
    labels = json.loads((tmp_path / "fo" / "labels.json").read_text())["labels"]
    # FiftyOne's FiftyOneImageClassificationDataset, multilabel with confidences: {sample: [{label, confidence}]}
    assert len(labels) == len(ids) and all(Path(p).is_absolute() and Path(p).exists() for p in labels)
    first = labels[str(Path(next(iter(labels))))]
    assert all(set(x) == {"label", "confidence"} and x["label"] in names for x in first)
    # a reviewer confirms two classes of the first image (Label Studio's export: annotations beside the data)
    tasks[0]["annotations"] = [{"result": [{"from_name": "labels", "to_name": "image", "type": "choices",
                                            "value": {"choices": [names[1], names[4]]}}], "was_cancelled": False}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    rows = [{"image": i, "labels": "|".join(n for n, y in zip(names, lab) if y)}
            for i, lab in zip(ids, np.load(site["root"] / "formatted_train_labels.npy"))]
    import pandas as pd
    pd.DataFrame(rows).to_csv(tmp_path / "tags.csv", index=False)
    r = invoke("data", "prepare", "table", "--csv", tmp_path / "tags.csv", "--images",
               site["root"] / "VOCdevkit/VOC2012/JPEGImages", "--out", tmp_path / "mine", "--observed-only",
               "--reviewed", tmp_path / "export.json")
    assert r.exit_code == 0 and "1 images: 2 confirmed positives" in r.output, r.output
    from aevlp.data import load_dataset
    d = load_dataset("table", tmp_path / "mine")
    row = list(d.train.images).index(ids[0]) if ids[0] in d.train.images else None
    if row is not None:  # (the seeded split may have sent it to test)
        k = {n: i for i, n in enumerate(d.classnames)}
        assert d.train.observed[row, k[names[1]]] == 1 and d.train.observed[row, k[names[4]]] == 1
        assert (d.train.observed[row] == -1).sum() == len(d.classnames) - 2  # the rest: confirmed negatives


def test_the_overview_reads_no_rows_and_counts_what_the_class_pages_count(site):
    """index.html loads the per-class summaries only (no class's rows: it opens at once at any size), and its
    counts at each class's θ (and at a θ set in the query) are those of the cache, computed here with numpy."""
    index = site["site"] / "index.html"
    assert "data/class-" not in index.read_text()
    theta0 = float(site["cfg"]["damp"]["threshold"])
    text = dom(index, "theta.3=0.3&theta.5=0")
    for k in range(20):
        row = re.search(rf'<tr data-class="{k}">(.*?)</tr>', text, flags=re.S).group(1)
        got = dict(re.findall(r'<td class="([a-z0-9]+)">([^<]*)</td>', row))
        want = expected_counts(site["cache"], site["cfg"], k, {3: 0.3, 5: 0.0}.get(k, theta0))
        assert int(got["positive"]) == want["positive"], (k, got, want)
        assert float(got["precision"]) == pytest.approx(want["precision"], abs=0.05), (k, got, want)
