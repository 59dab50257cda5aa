"""The zero-shot teacher: how well the CLIP model that makes the pseudo-labels ranks the test images itself.

From the cached, unflipped test embeddings and the class features, with the cache's temperature:
the global view's softmax score s^g, and, where every view of the test images was stored
(`--store-embeddings all`), the DAMP score f = ½(s^g + max_r s^r) (no observed label at test time,
so the gate η' is 0). It tells users what the student trained from the pseudo-labels must beat.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import torch

from aevlp.damp import aggregate, softmax
from aevlp.metrics import mean_average_precision

__all__ = ["zero_shot_scores", "zero_shot_summary"]


def zero_shot_scores(embeddings: np.ndarray, text: np.ndarray, temperature: float,
                     device: torch.device | None = None) -> dict[str, np.ndarray]:
    """{"global": s^g [N, C]} and, for embeddings [N, V, D] with V > 1, {"damp": f [N, C]}; computed on `device`
    (default: the one inference rule's, `aevlp.device.inference`) in float32."""
    if device is None:
        from aevlp.device import inference

        device = inference().device
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).to(device)
    sims = emb @ torch.as_tensor(np.asarray(text, dtype=np.float32)).to(device).T  # [N, C] or [N, V, C]
    if sims.ndim == 2:
        sims = sims[:, None]
    out = {"global": softmax(sims[:, 0], temperature).cpu().numpy()}
    if sims.shape[1] > 1:
        f, _ = aggregate(sims[:, 0], sims[:, 1:], torch.zeros_like(sims[:, 0]), temperature=temperature, eta=0.0)
        out["damp"] = f.cpu().numpy()
    return out


def zero_shot_summary(f: h5py.File) -> dict:
    """`zero_shot_global_map` (and `zero_shot_damp_map`) on the test split, where the cache has what it takes."""
    if "test_embeddings" not in f or "test_labels" not in f or not f.attrs.get("eval_done", False):
        return {}
    from aevlp.settings import default_of

    temperature = json.loads(f.attrs.get("selection", "{}")).get("temperature", default_of("damp.temperature"))
    scores = zero_shot_scores(f["test_embeddings"][:], f["text_features"][:], temperature)
    labels = f["test_labels"][:]
    return {f"zero_shot_{k}_map": round(mean_average_precision(v, labels), 3) for k, v in scores.items()}
