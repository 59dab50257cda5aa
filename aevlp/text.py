"""The text side of stage one: class prompts → CLIP text features → relation-refined class features.

Seconds of work next to the image encoder; `TextSpec` (prompts, GCN, relation) says what it is.
"""
from __future__ import annotations

import torch

from aevlp.clip import ClipModel, file_sha256
from aevlp.relation import load_relation, refine_text_features, relation_from_text
from aevlp.specs import TextSpec

__all__ = ["text_features", "relation_id"]


def relation_id(spec: TextSpec) -> str:
    """How the relation matrix is identified in a fingerprint: none, text, or a .npy file's hash."""
    if not spec.gcn:
        return "none"
    return "text" if spec.relation == "text" else "sha256:" + file_sha256(spec.relation)


def text_features(clip: ClipModel, classnames: list[str], spec: TextSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Refined, normalised class features [C, D] and the relation used (or None)."""
    t0 = clip.encode_text(classnames, spec.prompts)
    relation = None
    if spec.gcn:
        relation = relation_from_text(t0) if spec.relation == "text" else load_relation(spec.relation, len(classnames))
    feats = refine_text_features(t0, relation=relation, sparse_topk=spec.sparse_topk, reweight_p=spec.reweight_p,
                                 seed=spec.gcn_seed, enabled=spec.gcn)
    return feats, relation
