"""benchmarks/gpu.py cannot rot: its tiny CPU run finishes and its projection is the stated arithmetic."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny", "--json",
                    str(out)], check=True, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    r = json.loads(out.read_text())
    s1, a, o, p = r["stage_one"], r["stage_two_aevlp"], r["stage_two_official"], r["voc_run"]
    assert [q["workers"] for q in s1["pipeline"]] == [0, 1]
    # the pipeline against the encoder on the views it encodes: 34 distinct per image (17 boxes x 2 flips), not 68
    assert (s1["views_per_image"], s1["distinct_views_per_image"], s1["distinct_view_saving"]) == (68, 34, 2.0)
    assert s1["bare_images_per_s"] == pytest.approx(s1["encoder_views_per_s"] / 34)
    assert all(q["images_per_s"] > 0 and q["over_bare"] == pytest.approx(q["images_per_s"] / s1["bare_images_per_s"])
               for q in s1["pipeline"] + s1["placements"])
    assert [q["placement"] for q in s1["placements"]] == ["workers cut, workers decode", "GPU cuts, workers decode",
                                                          "GPU decodes (nvJPEG) and cuts"]  # compile: GPU runs only
    assert [x["loader"] for x in r["stage_two_loaders"]] == ["workers (PIL)", "image cache"]  # nvJPEG needs CUDA
    assert r["inference"]["cpu"]["images_per_s"] > 0
    assert a["images"] == o["images"] == 2 and a["batch"] == o["batch"] == 8  # pipelines/voc.toml's batch, both ways
    # the VOC run: aevlp encodes 4 rounds once and trains 8 epochs from the cache; the official code
    # encodes one round every epoch while it trains (5,717 images)
    best = max(q["images_per_s"] for q in s1["pipeline"] + s1["placements"])
    aevlp_min = (5717 / best + 8 * 5717 / a["images_per_s"]) / 60
    official_min = 8 * 5717 * (1 / s1["official_images_per_s_per_round"] + 1 / o["images_per_s"]) / 60
    assert p["aevlp_min"] == pytest.approx(aevlp_min) and p["official_min"] == pytest.approx(official_min)
    assert p["aevlp_over_official"] == pytest.approx(aevlp_min / official_min)
    assert r["largest_batch"]["views_per_forward"] == 64  # the tiny run's cap: 16, 32, 64 all fit


def test_gpu_section_says_how_to_measure_when_unmeasured():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run_all import gpu_section

    text = gpu_section([])
    assert "GPU: not measured yet" in text and "benchmarks/gpu.py --device cuda" in text
