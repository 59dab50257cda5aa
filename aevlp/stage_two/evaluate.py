"""Using a trained model: scores on a loader, evaluation on a split, labels for image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from aevlp.data import load_dataset
from aevlp.device import Inference, autocast, inference
from aevlp.errors import AevlpError, flag
from aevlp.imaging import to_model_input
from aevlp.metrics import evaluation_report, per_class_ap
from aevlp.stage_two.checkpoint import load_checkpoint
from aevlp.stage_two.inputs import ImageRows, input_layout, make_loader

__all__ = ["predict_scores", "evaluate_checkpoint", "checkpoint_scores", "predict_images"]


@torch.no_grad()
def predict_scores(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   precision: str = "fp32", prepare=None) -> np.ndarray:
    """Sigmoid probabilities [N, C] for every item of the loader, in row order (`precision`: resolved
    autocast dtype, as training used; `prepare(x, rows)`: the batch as the model takes it, by default
    `to_model_input` without flips)."""
    model.eval()
    prepare = prepare or (lambda x, rows: to_model_input(x, device))
    out = np.zeros((len(loader.dataset), model.head.out_features), dtype=np.float32)
    for x, rows in loader:
        with autocast(device, precision):
            logits = model(prepare(x, rows))
        out[rows.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _checkpoint(path: str | Path):
    p = Path(path)
    p = p / "best.pt" if p.is_dir() else p
    return load_checkpoint(p)


def expand_images(items: list[str]) -> list[str]:
    """Image files as given, and the image files inside any folder given (recursively, sorted)."""
    out: list[str] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(str(f) for f in item.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise AevlpError(f"{item}: no image files in this folder",
                                 hint=f"looked for {', '.join(IMAGE_SUFFIXES)}")
            out += found
        else:
            out.append(str(item))
    return out


def _clip_embeddings(meta: dict, paths: list[str], infer: Inference) -> torch.Tensor:
    """For a clip-head model: the unflipped global view of each image, embedded by the very CLIP the
    cache was made with (its weights must be the same file; checked by hash)."""
    from aevlp.specs import ClipSpec
    from aevlp.stage_one.clip import load_clip
    from aevlp.stage_one.views import GlobalViews, ViewSpec

    if not meta.get("clip"):
        raise AevlpError("this clip-head model does not record the CLIP it was trained on (an older run)",
                         hint="re-train it with this version of aevlp, or use an image backbone")
    clip = load_clip(ClipSpec(**{**meta["clip"], "device": str(infer.device)}))
    if clip.weights_id != meta.get("clip_weights"):
        raise AevlpError(f"the CLIP weights {meta['clip'].get('pretrained')} differ from the ones this model was "
                         "trained on", hint="point clip.pretrained at the original checkpoint")
    pre = meta["clip_preprocess"]
    spec = ViewSpec(grid=1, size=pre["image_size"], resize=pre["resize_mode"], interpolation=pre["interpolation"],
                    mean=tuple(pre["mean"]), std=tuple(pre["std"]), flip=False)
    bs = infer.batch_size
    batches = [list(range(i, min(i + bs, len(paths)))) for i in range(0, len(paths), bs)]
    out = []
    for _, slots, errors in GlobalViews(paths, batches, spec):
        if errors:
            raise AevlpError(f"cannot read image {errors[0][1]}")
        out.append(clip.encode_images(spec.transform.normalize(slots[:, 0], clip.dtype)))
    return torch.cat(out)


def _scores(model, meta: dict, paths: list[str], infer: Inference | None = None) -> np.ndarray:
    """A checkpoint's probabilities [N, C] for image files, on `infer`'s device (the one rule: `aevlp.device.
    inference`) with the precision training used there; images decoded by the loader's workers."""
    infer = infer or inference()
    dev = infer.device
    model = model.to(dev)
    if meta["backbone"] == "clip-head":
        emb = _clip_embeddings(meta, paths, infer).to(dev)
        with torch.no_grad(), autocast(dev, infer.precision):
            return torch.sigmoid(model(emb).float()).cpu().numpy()
    layout = input_layout(meta, bool(meta.get("channels_last")))
    if layout.channels_last:  # the memory format the run trained and tested in: the very same numbers
        model = model.to(memory_format=torch.channels_last)
    workers = 0 if len(paths) <= infer.batch_size else -1  # a few images: no worker start-up
    loader = make_loader(ImageRows(paths, meta["image_size"]), infer.batch_size, workers, dev)
    return predict_scores(model, loader, dev, infer.precision, prepare=lambda x, rows: layout(x, dev))


def _run_dataset(path: str | Path) -> tuple[str, str]:
    """(dataset name, data root) from the run directory's config.toml beside the checkpoint."""
    from aevlp.specs import Specs
    from aevlp.stage_two.run_folder import RunFolder

    p = Path(path)
    cfg = RunFolder(p if p.is_dir() else p.parent).config()
    d = Specs.of(cfg).dataset if cfg is not None else None
    if d is None or not d.name:
        raise AevlpError(f"{path}: no run directory config.toml to take the dataset from",
                         hint=f"pass {flag('dataset.name', 'NAME')} {flag('dataset.data_root', 'DIR')}")
    return d.name, d.data_root


def evaluate_checkpoint(path: str | Path, dataset: str | None = None, data_root: str | None = None,
                        split: str = "test", batch_size: int = 64, device: str = "auto") -> tuple[dict, pd.DataFrame]:
    """(mAP report, per-class AP table) of a trained model on a split; the dataset and its root default
    to those of the run the checkpoint belongs to."""
    infer = inference(device, batch_size)
    model, meta = _checkpoint(path)
    if not dataset or not data_root:
        run_name, run_root = _run_dataset(path)
        dataset, data_root = dataset or run_name, data_root or run_root
    data = load_dataset(dataset, data_root)
    if data.classnames != meta["classnames"]:
        raise AevlpError(f"{path} was trained on other classes than {data.info.name}'s")
    s = data.split(split)
    scores = _scores(model, meta, [str(data.image_root / p) for p in s.images], infer)
    return ({**evaluation_report(scores, s.labels), "images": len(s)},
            per_class_ap(scores, s.labels, data.classnames))


def checkpoint_scores(path: str | Path, image_paths: list[str], infer: Inference | None = None) -> np.ndarray:
    """A run's (or best.pt's) probabilities [N, C] for image files, as `aevlp eval` computes them."""
    model, meta = _checkpoint(path)
    return _scores(model, meta, [str(p) for p in image_paths], infer)


def predict_images(path: str | Path, images: list[str], threshold: float = 0.5, device: str = "auto",
                   batch_size: int = 64) -> pd.DataFrame:
    """path, one probability column per class, labels (>= threshold, joined by |), num_labels, and top3
    ("name:p; name:p; name:p": class names may hold spaces)."""
    infer = inference(device, batch_size)
    model, meta = _checkpoint(path)
    paths = expand_images(images)
    scores = _scores(model, meta, paths, infer)
    names = meta["classnames"]
    df = pd.DataFrame(scores, columns=names)
    df.insert(0, "path", paths)
    df["labels"] = ["|".join(n for n, s in zip(names, row) if s >= threshold) for row in scores]
    df["num_labels"] = (scores >= threshold).sum(1).astype(np.int64)
    df["top3"] = ["; ".join(f"{names[c]}:{row[c]:.2f}" for c in np.argsort(-row)[:3]) for row in scores]
    return df
