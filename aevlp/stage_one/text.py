"""The text side of stage one: class phrases → prompts → CLIP text features → relation-refined features.

Seconds of work next to the image encoder; `TextSpec` (prompts, phrases, GCN, relation) says what it is.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from aevlp.errors import DataError
from aevlp.hashing import file_sha256
from aevlp.registry import did_you_mean
from aevlp.specs import TextSpec
from aevlp.stage_one.clip import ClipModel, prompt_name
from aevlp.stage_one.relation import load_relation, refine_text_features, relation_from_text

__all__ = ["class_phrases", "read_phrases", "text_features", "relation_id", "ClassFeatures"]


def read_phrases(path: str | Path, classnames: list[str]) -> list[str]:
    """A user's class phrases: a CSV of `classname,phrase` rows (any order, optional header), or a text
    file with one phrase per line in class order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"phrases file {path} not found", hint="pass a CSV (classname,phrase) or one phrase per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["classname", "phrase"]:
            rows = rows[1:]
        if any(len(r) != 2 for r in rows):
            bad = next(i for i, r in enumerate(rows) if len(r) != 2)
            raise DataError(f"{path}: row {bad + 1} has {len(rows[bad])} fields, expected classname,phrase",
                            hint='quote phrases that contain commas: "curved (up or down), bill"')
        mapping = {r[0].strip(): r[1].strip() for r in rows}
        unknown = [k for k in mapping if k not in classnames]
        if unknown:
            raise DataError(f"{path}: unknown class '{unknown[0]}'{did_you_mean(unknown[0], classnames)}",
                            hint=f"{len(unknown)} unknown name(s); class names are those of the dataset (aevlp data "
                                 "info)")
        missing = [c for c in classnames if c not in mapping]
        if missing:
            raise DataError(f"{path}: no phrase for {len(missing)} class(es), e.g. {missing[:3]}")
        return [mapping[c] for c in classnames]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(classnames):
        raise DataError(f"{path}: {len(lines)} phrases for {len(classnames)} classes",
                        hint="one phrase per line, in the dataset's class order (or a CSV classname,phrase)")
    return lines


def class_phrases(classnames: list[str], spec: TextSpec) -> list[str]:
    """The phrase each class is prompted with: the user's file (text.phrases) or a readable class name."""
    return read_phrases(spec.phrases, classnames) if spec.phrases else [prompt_name(c) for c in classnames]


def relation_id(spec: TextSpec) -> str:
    """How the relation matrix is identified in a fingerprint: none, text, or a .npy file's hash."""
    if not spec.gcn:
        return "none"
    return "text" if spec.relation == "text" else "sha256:" + file_sha256(spec.relation)


@dataclass(frozen=True)
class ClassFeatures:
    """The class side of stage one: `refined` [C, D] (GCN-refined, normalised: what DAMP compares views
    with), `plain` [C, D] (the prompts' text features, normalised, no GCN: VLPL's) and the relation used."""

    refined: torch.Tensor
    plain: torch.Tensor
    relation: torch.Tensor | None


def text_features(clip: ClipModel, classnames: list[str], spec: TextSpec) -> ClassFeatures:
    """The class features of `classnames` under the text side `spec` (prompts, phrases, GCN, relation)."""
    t0 = clip.encode_text(class_phrases(classnames, spec), spec.prompts)
    relation = None
    if spec.gcn:
        relation = relation_from_text(t0) if spec.relation == "text" else load_relation(spec.relation, len(classnames))
    feats = refine_text_features(t0, relation=relation, sparse_topk=spec.sparse_topk, reweight_p=spec.reweight_p,
                                 seed=spec.gcn_seed, enabled=spec.gcn)
    return ClassFeatures(refined=feats, plain=torch.nn.functional.normalize(t0.float(), dim=-1), relation=relation)
