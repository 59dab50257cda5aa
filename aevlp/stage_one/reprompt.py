"""Re-prompting: a new text side (prompts, phrases, classes, GCN) for an existing cache, without images.

Stage one's expensive half is the image encoder; its text side costs seconds. A cache made with
`--store-embeddings all` keeps every distinct view's embedding, so when only the text side of the
fingerprint changed, the new cache is derived from them: new class features (the text encoder
alone), similarities, DAMP scores and pseudo-labels, written atomically like any cache. No image is
decoded and no image encoder is built.
"""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import torch

from aevlp.cache import CacheLayout, CacheWriter
from aevlp.cache.reader import sims_from_embeddings
from aevlp.cache.summary import filled_summary
from aevlp.damp import pseudo_labels
from aevlp.progress import bar

__all__ = ["rederive"]

ROWS = 1024


def rederive(plan, progress: bool = True) -> dict:
    """Write plan.target from the embeddings of the existing plan.target with the plan's text side."""
    from aevlp.stage_one.clip import load_text_encoder
    from aevlp.stage_one.text import text_features

    t0 = time.time()
    target, data, specs = plan.target, plan.data, plan.specs
    clip = load_text_encoder(specs.clip)
    classes = text_features(clip, data.classnames, specs.text)
    sel = specs.damp.selection()
    with _writer_like(target, plan, classes) as writer:  # (it holds the cache's lock)
        with h5py.File(target, "r") as src:
            _fill_from(src, writer, classes.refined, data.train.observed[:plan.n], sel, progress)
            for split in ("val", "test"):
                if f"{split}_embeddings" in src and f"{split}_embeddings" in writer.f:
                    writer.write_eval(split, src[f"{split}_embeddings"][:])
            writer.f.attrs["eval_done"] = True
            stats = {**filled_summary(writer.f), "reprompt_seconds": round(time.time() - t0, 2)}
        writer.finish(stats)  # the source is closed: the new file replaces it atomically
    return stats


def _writer_like(target, plan, classes) -> CacheWriter:
    """A writer with the source cache's image-side layout and preprocessing, and the plan's rows, labels and
    text side (the same fields stage one writes, `info` included: train reads [text] back from it)."""
    fields = plan.writer_fields((0, plan.n), plan.eval_ids, classes)
    fields["info"] = {**fields["info"], "reprompted": True}
    with h5py.File(target, "r") as src:
        layout, pre = CacheLayout.of_file(src), json.loads(src.attrs["clip_preprocess"])
    return CacheWriter(plan.target, plan.fingerprint, layout, clip_preprocess=pre, **fields)


def _fill_from(src: h5py.File, writer: CacheWriter, feats: torch.Tensor, observed: np.ndarray, sel: dict,
               progress: bool) -> None:
    """Rows in chunks: never more than ROWS rows of embeddings in memory."""
    n = src["embeddings"].shape[0]
    obs = torch.as_tensor(observed)
    for start in bar(range(0, n, ROWS), desc="re-prompt", unit="chunk", disable=not progress):
        stop = min(start + ROWS, n)
        emb, index, bad = src["embeddings"][start:stop], src["embedding_index"][start:stop], src["bad"][start:stop]
        sims = sims_from_embeddings(emb, index, feats)  # [R, n, V, C]
        scores, pseudo = zip(*(pseudo_labels(sims[r].float(), obs[start:stop], **sel) for r in range(sims.shape[0])))
        scores, pseudo = torch.stack(scores), torch.stack(pseudo)
        if bad.any():
            sims[:, bad], scores[:, bad], pseudo[:, bad] = 0, 0, 0
        writer.write(start, sims.numpy(), scores.numpy(), pseudo.numpy(), bad, emb, index)
