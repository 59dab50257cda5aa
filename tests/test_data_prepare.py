"""Preparers on small real-format fixtures, and the loader's validation of bad input."""
import json

import numpy as np
import pytest
from PIL import Image

from aevlp.data import load_dataset
from aevlp.data.coco import prepare_coco
from aevlp.data.cub import prepare_cub
from aevlp.data.registry import builtin_classnames, get_dataset
from aevlp.data.table import prepare_table
from aevlp.data.voc import prepare_voc
from aevlp.errors import DataError

VOC = builtin_classnames("voc")


def _voc_xml(objs):
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


@pytest.fixture
def voc_raw(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    ann = {  # id -> objects (name, difficult)
        "2008_000003": [("cat", 0), ("dog", 0)],
        "2008_000001": [("person", 0), ("cat", 1)],  # difficult cat does not count
        "2008_000002": [("bus", 1)],  # only difficult: no positive -> dropped
        "2008_000010": [("sofa", 0)],
        "2008_000011": [("train", 0), ("train", 0), ("car", 0)],
    }
    for i, objs in ann.items():
        (root / "Annotations" / f"{i}.xml").write_text(_voc_xml(objs))
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000003\n2008_000001\n2008_000002\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("2008_000010\n2008_000011\n")
    return tmp_path, ann


def test_voc_xml(voc_raw, tmp_path):
    raw, _ = voc_raw
    s = prepare_voc(raw, tmp_path / "out")
    assert s["train_images"] == 2 and s["train_dropped_without_positive"] == 1
    imgs = np.load(tmp_path / "out" / "formatted_train_images.npy")
    assert imgs.tolist() == ["2008_000001.jpg", "2008_000003.jpg"]  # sorted by file name
    y = np.load(tmp_path / "out" / "formatted_train_labels.npy")
    assert y.dtype == np.float32
    assert np.flatnonzero(y[0]).tolist() == [VOC.index("person")]
    assert np.flatnonzero(y[1]).tolist() == sorted([VOC.index("cat"), VOC.index("dog")])
    yv = np.load(tmp_path / "out" / "formatted_val_labels.npy")
    assert np.flatnonzero(yv[1]).tolist() == sorted([VOC.index("train"), VOC.index("car")])


def test_voc_lists_agree_with_xml(voc_raw, tmp_path):
    raw, ann = voc_raw
    main = raw / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    phase_ids = {"train": ["2008_000003", "2008_000001", "2008_000002"], "val": ["2008_000010", "2008_000011"]}
    for cls in VOC:  # per-class trainval lists, VOC's format: 1 positive, 0 difficult-only, -1 absent
        lines = []
        for i in phase_ids["train"] + phase_ids["val"]:
            names = [(n, d) for n, d in ann[i] if n == cls]
            flag = -1 if not names else (1 if any(d == 0 for _, d in names) else 0)
            lines.append(f"{i} {flag:2d}")
        (main / f"{cls}_trainval.txt").write_text("\n".join(lines) + "\n")
    prepare_voc(raw, tmp_path / "a", source="xml")
    prepare_voc(raw, tmp_path / "b", source="lists")
    for f in ("train_images", "train_labels", "val_labels", "train_labels_obs"):
        assert np.array_equal(np.load(tmp_path / "a" / f"formatted_{f}.npy"),
                              np.load(tmp_path / "b" / f"formatted_{f}.npy"))


def test_voc_bad_class_name(voc_raw, tmp_path):
    raw, _ = voc_raw
    (raw / "VOCdevkit/VOC2012/Annotations/2008_000010.xml").write_text(_voc_xml([("unicorn", 0)]))
    with pytest.raises(DataError, match="2008_000010.xml.*unicorn"):
        prepare_voc(raw, tmp_path / "out", source="xml")


def test_voc_missing_folder(tmp_path):
    with pytest.raises(DataError, match="ImageSets/Main"):
        prepare_voc(tmp_path, tmp_path / "out")


def _coco(path, phase, images, anns):
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    data = {"images": [{"id": i, "file_name": f"COCO_{phase}2014_{i:012d}.jpg"} for i in images],
            "annotations": [{"image_id": i, "category_id": c} for i, c in anns], "categories": cats}
    (path / "annotations").mkdir(exist_ok=True)
    (path / "annotations" / f"instances_{phase}2014.json").write_text(json.dumps(data))


def test_coco(tmp_path):
    _coco(tmp_path, "train", [9, 25, 100, 3], [(9, 1), (9, 18), (100, 90), (25, 18), (25, 18)])
    _coco(tmp_path, "val", [42, 7], [(42, 1), (7, 90)])
    s = prepare_coco(tmp_path, tmp_path / "out")
    assert s["train_images"] == 3 and s["train_dropped_without_positive"] == 1
    imgs = np.load(tmp_path / "out" / "formatted_train_images.npy").tolist()
    # ids sorted as strings: "100" < "25" < "9"
    assert imgs == ["train2014/COCO_train2014_000000000100.jpg", "train2014/COCO_train2014_000000000025.jpg",
                    "train2014/COCO_train2014_000000000009.jpg"]
    y = np.load(tmp_path / "out" / "formatted_train_labels.npy")
    # classes in category-id order: person(1), dog(18), toothbrush(90)
    assert y.tolist() == [[0, 0, 1], [0, 1, 0], [1, 1, 0]]
    meta = json.loads((tmp_path / "out" / "aevlp_dataset.json").read_text())
    assert meta["classnames"] == ["person", "dog", "toothbrush"]


def test_coco_missing_json(tmp_path):
    with pytest.raises(DataError, match="instances_train2014.json"):
        prepare_coco(tmp_path, tmp_path / "out")


def test_cub(tmp_path):
    base = tmp_path / "CUB_200_2011"
    (base / "attributes").mkdir(parents=True)
    (base / "images.txt").write_text("1 001.A/a.jpg\n2 001.A/b.jpg\n3 002.B/c.jpg\n")
    (base / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    lines = []
    truth = {1: {1, 5}, 2: {312}, 3: {2, 3, 100}}
    for img in (1, 2, 3):
        for a in range(1, 313):
            extra = " 0" if (img, a) == (2, 7) else ""  # the real file has some 6-field lines
            lines.append(f"{img} {a} {int(a in truth[img])} 3 12.5{extra}")
    (base / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines) + "\n")
    s = prepare_cub(tmp_path, tmp_path / "out")
    assert (s["train_images"], s["test_images"]) == (2, 1)
    y = np.load(tmp_path / "out" / "formatted_train_labels.npy")
    assert y.dtype == np.int64 and y.shape == (2, 312)
    assert [set(np.flatnonzero(r) + 1) for r in y] == [truth[1], truth[3]]
    assert np.load(tmp_path / "out" / "formatted_val_images.npy").tolist() == ["001.A/b.jpg"]


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8), (n.__hash__() % 255, 0, 0)).save(folder / n)


def test_table_labels_column(tmp_path):
    _images(tmp_path / "img", [f"{i}.png" for i in range(10)])
    rows = ["image,labels,split"] + [f"{i}.png,{'cat|dog' if i % 2 else 'dog'},{'test' if i >= 8 else 'train'}"
                                     for i in range(10)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    s = prepare_table(tmp_path / "t.csv", tmp_path / "img", tmp_path / "out")
    assert (s["train_images"], s["test_images"]) == (8, 2)
    d = load_dataset("table", tmp_path / "out")
    assert d.classnames == ["cat", "dog"]
    assert d.test.labels.tolist() == [[0, 1], [1, 1]]
    assert (d.image_root / d.train.images[0]).is_file()
    assert len(d.train) + len(d.val) == 8


def test_table_csv_delimiters_and_empty_files(tmp_path):
    _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    csv = tmp_path / "t.csv"
    rows = [f"{i}.png;{'cat|dog' if i % 2 else 'dog'};{'test' if i >= 4 else 'train'}" for i in range(6)]
    csv.write_text("\n".join(["image;labels;split", *rows]) + "\n")  # a spreadsheet's ';' export
    s = prepare_table(csv, tmp_path / "img", tmp_path / "semi")
    assert (s["train_images"], s["test_images"]) == (4, 2) and load_dataset("table", tmp_path / "semi").classnames \
        == ["cat", "dog"]
    csv.write_text("")
    with pytest.raises(DataError, match="is empty") as e:
        prepare_table(csv, tmp_path / "img", tmp_path / "o1")
    assert "image,labels" in e.value.hint
    csv.write_text("image,labels,split\n")
    with pytest.raises(DataError, match="a header .* but no rows") as e:
        prepare_table(csv, tmp_path / "img", tmp_path / "o2")
    assert "one row per image" in e.value.hint


def test_table_onehot_and_errors(tmp_path):
    _images(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    csv = tmp_path / "t.csv"
    csv.write_text("path,x,y\na.png,1,0\nb.png,0,1\nc.png,1,1\nd.png,0,0\ne.png,1,0\n")
    s = prepare_table(csv, tmp_path / "img", tmp_path / "out", test_frac=0.4)
    assert s["train_images"] + s["test_images"] == 5
    assert s["train_rows_without_positive"] + s["test_rows_without_positive"] == 1  # d.png reported
    csv.write_text("path,x,y\na.png,1,2\n")
    with pytest.raises(DataError, match="row 2, column 'y' is '2'"):
        prepare_table(csv, tmp_path / "img", tmp_path / "o2")
    csv.write_text("path,x\nmissing.png,1\na.png,1\n")
    with pytest.raises(DataError, match="1 image files not found.*missing.png"):
        prepare_table(csv, tmp_path / "img", tmp_path / "o3")
    csv.write_text("name,x\na.png,1\n")
    with pytest.raises(DataError, match="no image path column"):
        prepare_table(csv, tmp_path / "img", tmp_path / "o4")


def _layout(root, n_train=20, n_val=6, c=20, rs=None):
    rs = rs or np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    for phase, n in (("train", n_train), ("val", n_val)):
        y = (rs.rand(n, c) < 0.2).astype(np.float32)
        y[:, 0] = 1
        np.save(root / f"formatted_{phase}_images.npy", np.array([f"{phase}{i}.jpg" for i in range(n)]))
        np.save(root / f"formatted_{phase}_labels.npy", y)
    return root


def test_loader_generates_observed_and_splits(tmp_path):
    root = _layout(tmp_path / "voc")
    d = load_dataset("pascal", root)
    assert d.info.name == "voc" and d.num_classes == 20
    assert (len(d.train), len(d.val), len(d.test)) == (16, 4, 6)
    assert d.report["train_observed_generated"]
    assert np.all(d.train.observed.sum(1) == 1)
    assert np.array_equal(d.val.labels, np.load(root / "formatted_train_labels.npy")[d.val.index])  # clean val
    # its observed tags (what the model-selection proxies read): one true positive per row, as in training
    assert np.all(d.val.observed.sum(1) == 1) and np.all(d.val.labels[d.val.observed == 1] == 1)
    assert str(d.image_root).endswith("VOCdevkit/VOC2012/JPEGImages")


def test_loader_errors(tmp_path):
    root = _layout(tmp_path / "voc")
    with pytest.raises(DataError, match="label columns"):
        load_dataset("coco", root)
    np.save(root / "formatted_val_labels.npy", np.full((6, 20), 2.0))
    with pytest.raises(DataError, match=r"formatted_val_labels.npy: label values must be in"):
        load_dataset("voc", root)
    np.save(root / "formatted_val_labels.npy", np.zeros((5, 20)))
    with pytest.raises(DataError, match="does not match 6 images"):
        load_dataset("voc", root)
    (root / "formatted_val_labels.npy").unlink()
    with pytest.raises(DataError, match="missing file .*formatted_val_labels.npy"):
        load_dataset("voc", root)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(DataError, match="known datasets: coco, cub, fashion-mosaic, nuswide, table, voc"):
        get_dataset("imagenet")


def test_loader_reports_rows_without_positive(tmp_path):
    root = _layout(tmp_path / "nus", c=81)
    y = np.load(root / "formatted_train_labels.npy")
    y[3] = 0
    np.save(root / "formatted_train_labels.npy", y)
    d = load_dataset("nus", root)
    assert d.report["train_rows_without_positive"] == 1
    assert len(d.train) + len(d.val) == 20  # kept, not dropped


def test_aliases():
    assert get_dataset("NUS").name == "nuswide" and get_dataset("pascal").name == "voc"
    cub = builtin_classnames("cub")
    assert len(cub) == 312 and cub[0] == "has_bill_shape::curved_(up_or_down)"
    assert len(builtin_classnames("nuswide")) == 81 and len(builtin_classnames("coco")) == 80
