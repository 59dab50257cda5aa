"""Using a trained model: scores on a loader, evaluation on a split, labels for image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from aevlp.checkpoint import load_checkpoint
from aevlp.data import load_dataset
from aevlp.device import autocast
from aevlp.errors import AevlpError
from aevlp.inputs import ImageRows
from aevlp.metrics import evaluation_report, per_class_ap

__all__ = ["predict_scores", "evaluate_checkpoint", "predict_images"]


@torch.no_grad()
def predict_scores(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   precision: str = "fp32") -> np.ndarray:
    """Sigmoid probabilities [N, C] for every item of the loader, in row order (`precision`: resolved
    autocast dtype, as training used)."""
    model.eval()
    out = np.zeros((len(loader.dataset), model.head.out_features), dtype=np.float32)
    for x, rows in loader:
        with autocast(device, precision):
            logits = model(x.to(device, non_blocking=True))
        out[rows.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def _checkpoint(path: str | Path):
    p = Path(path)
    p = p / "best.pt" if p.is_dir() else p
    model, meta = load_checkpoint(p)
    if meta["backbone"] == "clip-head":
        raise AevlpError(f"{p} is a clip-head model: it takes CLIP embeddings, not images",
                         hint="its test mAP is in the run's results.json; image models are resnet50/101 or small-cnn")
    return model, meta


def evaluate_checkpoint(path: str | Path, dataset: str, data_root: str, split: str = "test",
                        batch_size: int = 32) -> tuple[dict, pd.DataFrame]:
    model, meta = _checkpoint(path)
    data = load_dataset(dataset, data_root)
    if data.classnames != meta["classnames"]:
        raise AevlpError(f"{path} was trained on other classes than {data.info.name}'s")
    s = data.split(split)
    loader = DataLoader(ImageRows([data.image_root / p for p in s.images], meta["image_size"]), batch_size=batch_size)
    scores = predict_scores(model, loader, torch.device("cpu"))
    return ({**evaluation_report(scores, s.labels), "images": len(s)},
            per_class_ap(scores, s.labels, data.classnames))


def predict_images(path: str | Path, images: list[str], threshold: float = 0.5) -> pd.DataFrame:
    model, meta = _checkpoint(path)
    loader = DataLoader(ImageRows(images, meta["image_size"]), batch_size=32)
    scores = predict_scores(model, loader, torch.device("cpu"))
    names = meta["classnames"]
    df = pd.DataFrame(scores, columns=names)
    df.insert(0, "path", images)
    df["labels"] = ["|".join(n for n, s in zip(names, row) if s >= threshold) for row in scores]
    df["num_labels"] = (scores >= threshold).sum(1).astype(np.int64)
    return df
