"""Cache → pseudo-labels for each training epoch, with stage two's own DAMP parameters.

Epoch e (from 1) reads augmentation round (e-1) mod R, so consecutive epochs see differently
flipped views, as the official code's per-batch recomputation does, without running CLIP. Where a
student's scores are stored beside the cache (`damp.student`, `aevlp.stage_two.refine`), the DAMP scores are fused
with them before selection; per-class thresholds (`damp.class_thresholds`, `aevlp.stage_two.thresholds`) apply to
the scores selected from, with each class's hidden positives from `aevlp.stage_two.priors` (E known, a labelled val
split, or estimated).

`labeler_for` is the one place a labeler is built: training, the exports, the gallery, the review site and
`aevlp cache thresholds` all select through it, so each says what the others use.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from aevlp.cache import Cache
from aevlp.damp import aggregate, pseudo_labels, select
from aevlp.errors import AevlpError
from aevlp.specs import DampSpec
from aevlp.stage_two.priors import Expected, resolve_expected
from aevlp.stage_two.score_columns import ScoreColumns
from aevlp.stage_two.thresholds import RULES, class_thresholds, read_thresholds

__all__ = ["PseudoLabeler", "labeler_for", "teacher_scores"]


class PseudoLabeler:
    """Builds int8 [N, C] pseudo-labels from cached similarities for a given epoch."""

    def __init__(self, cache: Cache, damp: DampSpec, observed: np.ndarray, expected: Expected | float = 0.0,
                 thresholds: tuple | None = None):
        """`thresholds`: (θ [C] or None, the rule's table) decided already (a StageTwoPlan's), else computed."""
        self.cache, self.damp = cache, damp
        self.observed = torch.as_tensor(observed)
        self._memo: dict[int, np.ndarray] = {}
        self._scores: ScoreColumns | None = None
        self._plain = _plain_global_sims(cache) if damp.source == "global-plain" else None
        self.student, self.provenance, self.student_val = self._student(len(observed))
        self.expected = expected if isinstance(expected, Expected) else Expected(float(expected), "given")
        self.thresholds, self.threshold_table = self._class_thresholds() if thresholds is None else thresholds

    def round_for(self, epoch: int) -> int:
        return (epoch - 1) % self.cache.rounds

    def for_epoch(self, epoch: int) -> np.ndarray:
        r = self.round_for(epoch)
        if r not in self._memo:
            self._memo[r] = self.compute(r)
        return self._memo[r]

    def compute(self, r: int) -> np.ndarray:
        """Pseudo-labels int8 [N, C] of the cache's training rows in round r, selected a block of rows at a time
        (each row's selection depends on that row alone; memory is bounded by a block)."""
        out = np.empty(tuple(self.observed.shape), dtype=np.int8)
        for lo, hi in self._blocks():
            out[lo:hi] = self.select_rows(self._sims(r, lo, hi), self.observed[lo:hi], self._student_rows(lo, hi))
        return out

    def _blocks(self) -> list[tuple[int, int]]:
        return self.cache.row_blocks(len(self.observed))

    def _sims(self, r: int, lo: int, hi: int, plain: bool = True) -> torch.Tensor:
        """float32 [hi - lo, V, C] similarities of rows [lo, hi) in round r (VLPL's plain ones: [.., 1, C], unless
        `plain` is False: the cache's, which DAMP's scores read)."""
        use_plain = plain and self._plain is not None
        sims = self._plain[r, lo:hi, None] if use_plain else self.cache.sims_rows(r, lo, hi)
        return torch.as_tensor(sims.astype(np.float32))

    def select_rows(self, sims: torch.Tensor, observed: torch.Tensor, student: torch.Tensor | None) -> np.ndarray:
        """Pseudo-labels [M, C] of any rows from their similarities [M, V, C], observed labels and the student's
        scores on them (None: no student): the selection training uses, with its thresholds."""
        sel = self.damp.selection()
        if self.thresholds is not None:
            sel["threshold"] = torch.as_tensor(self.thresholds, dtype=torch.float32)
        if self.student is None:
            source = "global" if self.damp.source == "global-plain" else self.damp.source
            return pseudo_labels(sims, observed, **sel, source=source)[1].numpy()
        f, g = self._fused(sims, observed, student)
        return select(f, g, top_k=sel["top_k"], threshold=sel["threshold"], negative_ratio=sel["negative_ratio"],
                      negatives=sel["negatives"], observed=observed).numpy()

    def _fused(self, sims: torch.Tensor, observed: torch.Tensor, student: torch.Tensor | None):
        """(f, g) of one round: DAMP's, fused with the student's scores where given."""
        f, g = _damp(sims, observed, self.damp)
        if student is None:
            return f, g
        w = self.damp.student_weight
        return w * student + (1 - w) * f, w * student + (1 - w) * g

    def round_scores(self, r: int) -> np.ndarray:
        """[N, C] the score positives are selected from in round r (DAMP's f, fused with a student's)."""
        out = np.empty(tuple(self.observed.shape), dtype=np.float32)
        for lo, hi in self._blocks():
            out[lo:hi] = self.round_score_rows(r, lo, hi)
        return out

    def round_score_rows(self, r: int, lo: int, hi: int) -> np.ndarray:
        """[hi - lo, C] `round_scores(r)` of rows [lo, hi) alone (a block: `cache.row_blocks`)."""
        from aevlp.damp import softmax

        sims = self._sims(r, lo, hi)
        if self._plain is not None or self.damp.source == "global":
            return softmax(sims[:, 0], self.damp.temperature).numpy()
        return self._fused(sims, self.observed[lo:hi], self._student_rows(lo, hi))[0].numpy()

    def provenance_record(self) -> dict:
        """What these labels were selected with, for an export to say: the selection, θ per class (where not
        one θ), E and its source, the student and its provenance."""
        sel = {k: v for k, v in dataclasses.asdict(self.damp).items() if k not in ("student_loss",)}
        return {"selection": sel, "class_thresholds": None if self.thresholds is None else
                [round(float(t), 6) for t in self.thresholds],
                "expected_pos": {"value": round(self.expected.value, 4), "source": self.expected.source},
                "student": self.provenance}

    def scores(self) -> ScoreColumns:
        """[N, C] the score positives are selected from (DAMP's f, fused with a student's where stored),
        averaged over the rounds: what the threshold rules read, class by class (computed once, a block of rows
        at a time, and kept in a temporary file: `aevlp.stage_two.score_columns`)."""
        if self._scores is None:
            self._scores = ScoreColumns(*self.observed.shape)
            for lo, hi in self._blocks():
                student = self._student_rows(lo, hi)
                total = np.zeros((hi - lo, self.observed.shape[1]), dtype=np.float32)
                for r in range(self.cache.rounds):
                    total += self._fused(self._sims(r, lo, hi, plain=False), self.observed[lo:hi], student)[0].numpy()
                self._scores.write_rows(lo, total / self.cache.rounds)
        return self._scores

    def _student_rows(self, lo: int, hi: int) -> torch.Tensor | None:
        """The stored student's scores of rows [lo, hi) (read from its file a block at a time), None without one."""
        return None if self.student is None else torch.as_tensor(self.student[lo:hi])

    def _student(self, n: int):
        """(scores [N, C] (`StoredScores`), provenance, scores on the val split or None) of the stored student
        source, if any."""
        if not self.damp.student:
            return None, None, None
        if self.damp.source != "damp":
            raise AevlpError(f"damp.student fuses with DAMP scores, not with damp.source = {self.damp.source}")
        from aevlp.cache.sources import read_source

        scores, provenance, val, _ = read_source(self.cache, self.damp.student, with_val=True)
        return scores, provenance, val

    def _class_thresholds(self):
        """(θ [C] or None, the rule's table or None) for damp.class_thresholds (docs/method.md)."""
        how = self.damp.class_thresholds
        if not how:
            return None, None
        if self.damp.source != "damp":
            raise AevlpError(f"damp.class_thresholds applies to DAMP scores, not to damp.source = {self.damp.source}")
        if how in RULES:
            observed = self.observed.numpy()
            usable = ~self.cache.f["bad"][: len(observed)].astype(bool)
            hidden = self.expected.hidden_for(sum(((observed[lo:hi] == 1) & usable[lo:hi, None]).sum(0)
                                                  for lo, hi in self._blocks()))
            return class_thresholds(self.scores(), observed, how, hidden=hidden, global_theta=self.damp.threshold,
                                    min_auc=self.damp.min_auc, usable=usable)
        return read_thresholds(how, self.cache.classnames()), None


def _damp(sims: torch.Tensor, observed: torch.Tensor, damp: DampSpec) -> tuple[torch.Tensor, torch.Tensor]:
    sel = {k: v for k, v in damp.selection().items() if k in ("temperature", "eta")}
    return aggregate(sims[:, 0], sims[:, 1:], observed, **sel)


def teacher_scores(cache: Cache, damp: DampSpec, observed: np.ndarray) -> ScoreColumns:
    """[N, C] DAMP's f, averaged over the rounds, without any student: the teacher's own view of each row."""
    obs = torch.as_tensor(observed)
    out = ScoreColumns(*observed.shape)
    for lo, hi in cache.row_blocks(len(observed)):
        total = np.zeros((hi - lo, observed.shape[1]), dtype=np.float32)
        for r in range(cache.rounds):
            sims = torch.as_tensor(cache.sims_rows(r, lo, hi).astype(np.float32))
            total += _damp(sims, obs[lo:hi], damp)[0].numpy()
        out.write_rows(lo, total / cache.rounds)
    return out


def labeler_for(cache: Cache, cfg: dict, *, data=None, student: str = "",
                observed: np.ndarray | None = None, decided=None) -> PseudoLabeler:
    """The labeler a training run with `cfg` selects with on `cache`'s rows: its method's own selection (VLPL's),
    the student source `student` fused in, E and each class's hidden positives as stage two takes them
    (`aevlp.stage_two.priors.resolve_expected`). `data`: the dataset (default: the one the cache was made from);
    `observed`: the rows' observed labels (default: the cache's); the dataset is loaded only when E needs its val
    split (observed-only data: the cache's full training labels answer otherwise); `decided`: E and the θ a plan decided
    (`aevlp.stage_two.plan.Selection`), used as they are."""
    from aevlp.losses import LOSSES
    from aevlp.specs import Specs

    specs = Specs.of(cfg)
    spec = LOSSES.get(specs.loss["name"])
    damp = spec.pseudo_labels(specs.damp, dict(specs.loss)) if spec.pseudo_labels else specs.damp
    if student:
        damp = dataclasses.replace(damp, student=student, student_loss="")
    observed = cache.array("observed") if observed is None else observed
    if decided is not None:
        theta = None if decided.thresholds is None else np.asarray(decided.thresholds)
        return PseudoLabeler(cache, damp, observed, decided.expected, thresholds=(theta, decided.table))
    return PseudoLabeler(cache, damp, observed, _expected(cache, specs, data, damp, observed))


def _expected(cache: Cache, specs, data, damp: DampSpec, observed: np.ndarray) -> Expected:
    """E and the hidden positives per class for these training rows (`aevlp.stage_two.priors.resolve_expected`).
    `data` None: the cache's own labels and name answer where they can; the dataset is loaded where they cannot."""
    from aevlp.cache.sources import read_source
    from aevlp.data.registry import get_dataset

    usable = ~cache.f["bad"][: len(observed)].astype(bool)
    info = get_dataset(cache.fingerprint["dataset"] if data is None else data.info.name)
    known = ("labels" in cache.f) if data is None else data.train_labels_known
    settled = specs.loss["expected_pos"] or info.expected_pos or known
    if data is None and not settled:
        data = cache.dataset()
    student_val = None
    if damp.student and data is not None and data.val_labels != "full":
        _, _, val, val_ids = read_source(cache, damp.student, with_val=True)
        student_val = (val, data.val.observed) if val is not None and val_ids == list(data.val.images) else None
    train_labels = None
    if known:
        train_labels = cache.f["labels"] if data is None else data.train.labels
    return resolve_expected(
        observed if usable.all() else observed[usable], configured=specs.loss["expected_pos"], dataset=info.name,
        published=info.expected_pos, train_positives=None if train_labels is None else
        _positives_per_row(train_labels, len(observed), usable, cache),
        val_labels=data.val.labels if data is not None and data.val_labels == "full" else None,
        student_val=student_val,
        teacher=lambda: teacher_scores(cache, dataclasses.replace(damp, source="damp"), observed).take(usable),
        method=specs.damp.prior)


def _positives_per_row(labels, n: int, usable: np.ndarray, cache: Cache) -> float:
    """The mean number of positives per usable row among the first n rows of `labels` (an array, or the cache's
    dataset), read a block of rows at a time."""
    total = 0
    for lo, hi in cache.row_blocks(n):
        total += int((np.asarray(labels[lo:hi])[usable[lo:hi]] == 1).sum())
    return total / max(int(usable.sum()), 1)


def _plain_global_sims(cache: Cache) -> np.ndarray:
    """[R, N, C] similarities of each round's global view to the plain (not GCN-refined) class features."""
    plain = cache.plain_text_features()
    if plain is None or cache.embedding_mode == "none":
        raise AevlpError(f"{cache.path} lacks what VLPL's pseudo-labels need: the global views' embeddings and the "
                         "class text features before the GCN (stage one stores both since 2026-12 with "
                         "cache.store_embeddings = global or all)",
                         hint="re-run stage one: `aevlp pseudolabel ... --store-embeddings global --force`")
    emb = cache.global_embeddings().astype(np.float32)  # [R, N, D]
    return (emb @ plain.astype(np.float32).T).astype(np.float16)  # rounded as the cache's own sims are
