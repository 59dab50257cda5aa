import numpy as np
from click.testing import CliRunner
from PIL import Image

from aevlp.cli import cli


def test_help_and_version():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "pseudo-labels" in r.output
    assert CliRunner().invoke(cli, ["--version"]).output.strip().endswith("0.1.0")
    r = CliRunner().invoke(cli, ["data", "prepare", "--help"])
    assert r.exit_code == 0 and "table" in r.output and "voc" in r.output


def test_prepare_table_and_info(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "t.csv").write_text("image,labels\n" + "".join(f"{i}.png,a|b\n" for i in range(6)))
    r = CliRunner().invoke(cli, ["data", "prepare", "table", "--csv", str(tmp_path / "t.csv"),
                                 "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "out" / "formatted_train_labels.npy").shape == (5, 2)
    r = CliRunner().invoke(cli, ["data", "info", "--dataset", "table", "--data-root", str(tmp_path / "out")])
    assert r.exit_code == 0 and "train_images" in r.output


def test_user_error_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["data", "info", "--dataset", "voc", "--data-root", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "error: data root" in r.output and "Traceback" not in r.output and "hint:" in r.output
