"""Every method of the paper's comparison table as a named, registered loss (`--loss NAME`).

Families: `gr` (GR, GPR: AEVLP), `cole` (full-label BCE, AN, AN-LS, WAN, IUN, IU, EPR, ROLE),
`em` (EM, EM+APL, VLPL's EM-PL), `ll` (LL-R/Ct/Cp, BoostLU). Each loss is a pure function of
logits and label matrices, the mean over all B×C entries; methods that keep state across a run
(ROLE, LL-Cp, APL) are `Method` subclasses (`losses.method`). `LOSSES` is the registry the CLI,
pipelines and `build_loss` read.
"""
from __future__ import annotations

from aevlp.errors import ConfigError
from aevlp.losses.cole import (
    RoleMethod,
    an_loss,
    an_ls_loss,
    an_pl_loss,
    bce_full_loss,
    epr_loss,
    iu_loss,
    iun_loss,
    role_loss,
    wan_loss,
)
from aevlp.losses.common import COLE_EPS, LOG_EPS, expected_positive_regularizer
from aevlp.losses.em import AplMethod, em_apl_loss, em_loss, em_pl_loss, vlpl_selection
from aevlp.losses.gr import (
    SoftTargetMethod,
    gce_negative,
    gce_positive,
    gpr_loss,
    gpr_soft_loss,
    gr_loss,
    reweight,
    soft_pseudo_label,
)
from aevlp.losses.latent import MimeMethod, SmileMethod, mime_loss, smile_loss
from aevlp.losses.ll import BoostLUMethod, LLCpMethod, LLCtMethod, LLRMethod, boost_lu, ll_loss
from aevlp.losses.method import LossSpec, Method, RunInfo
from aevlp.losses.recipes import SCHEME_DEFAULTS
from aevlp.registry import Registry

__all__ = ["LOG_EPS", "COLE_EPS", "soft_pseudo_label", "reweight", "gce_positive", "gce_negative", "gr_loss",
           "gpr_loss", "gpr_soft_loss", "expected_positive_regularizer", "bce_full_loss", "an_loss", "an_ls_loss",
           "an_pl_loss",
           "wan_loss", "iun_loss", "iu_loss", "epr_loss", "role_loss", "em_loss", "em_pl_loss", "em_apl_loss",
           "ll_loss", "boost_lu", "mime_loss",
           "smile_loss", "LossSpec", "Method", "RunInfo", "LOSSES", "register_loss", "build_loss",
           "build_method", "check_labels_available"]

LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(name: str, spec: LossSpec) -> LossSpec:
    """Make a loss available by name (`--loss NAME`, pipelines, `build_loss`); a taken name is refused."""
    return LOSSES.register(name, spec)


def build_loss(name: str, params: dict) -> Method:
    """A stateless loss by name with its hyperparameters bound; unknown or missing keys are config errors.

    The result is called as `loss(logits, observed, pseudo=None, full=None, schedule=None)`, the same
    for every loss. Keys of `params` the loss does not take are ignored (one pipeline [loss] table
    serves several losses). Stateful methods (ROLE, LL, APL) need `build_method`.
    """
    spec = LOSSES.get(name)
    if spec.method is not None:
        raise ValueError(f"loss '{name}' keeps state across a run: use build_method(name, params, run)")
    return Method(spec, name, params)


def check_labels_available(name: str, labels: str, train_labels_known: bool) -> None:
    """Refuse a loss (or `train.labels = full`) that reads full training labels on observed-only data."""
    spec = LOSSES.get(name)
    if not train_labels_known and (spec.uses_full_labels or spec.needs_truth or labels == "full"):
        raise ConfigError(f"loss '{name}' (or train.labels = full) needs full training labels, which this "
                          "observed-only dataset does not have", hint="choose a single-positive method")


def build_method(name: str, params: dict, run: RunInfo) -> Method:
    """The method the training loop runs: the stateless wrapper, or the method's own state class."""
    spec = LOSSES.get(name)
    return (spec.method or Method)(spec, name, params, run)


def _own(method: str) -> dict:
    """The values a method takes where its shared [loss] key is 0 (`recipes.SCHEME_DEFAULTS`)."""
    return {k: v for k, (v, _) in SCHEME_DEFAULTS[method].items()}


for _name, _spec in {
    "gpr": LossSpec(gpr_loss, uses_pseudo=True, uses_schedule=True, source="AEVLP (Tran et al., ICCV 2025)"),
    "gr": LossSpec(gr_loss, uses_schedule=True, source="GR Loss (Chen et al., IJCAI 2024)"),
    "gpr-soft": LossSpec(gpr_soft_loss, uses_schedule=True, method=SoftTargetMethod, reads_scores=True,
                         source="GR with the unknowns learning the teacher's per-class calibrated scores (aevlp)"),
    "bce-full": LossSpec(bce_full_loss, uses_full_labels=True, source="full-label BCE (upper bound)"),
    "an": LossSpec(an_loss, source="Assume Negative (Cole et al., CVPR 2021)"),
    "an-ls": LossSpec(an_ls_loss, source="AN with label smoothing (Cole et al., CVPR 2021)"),
    "wan": LossSpec(wan_loss, source="Weak AN: negatives weighted 1/(C-1) (Cole et al., CVPR 2021)"),
    "iun": LossSpec(iun_loss, needs_truth=True, source="Ignore Unobserved Positives: an oracle that reads the true "
                                                       "negatives (Cole et al., CVPR 2021)"),
    "iu": LossSpec(iu_loss, source="Ignore Unobserved: observed labels only (Cole et al., CVPR 2021)"),
    "epr": LossSpec(epr_loss, source="Expected Positive Regularization (Cole et al., CVPR 2021)"),
    "role": LossSpec(role_loss, method=RoleMethod, source="ROLE: online label estimation (Cole et al., CVPR 2021)"),
    "an-pl": LossSpec(an_pl_loss, uses_pseudo=True, source="AN with pseudo-labels (the AEVLP code's AN_PL_loss)"),
    "em": LossSpec(em_loss, source="Entropy maximisation (Zhou et al., ECCV 2022)"),
    "em-apl": LossSpec(em_apl_loss, method=AplMethod, source="EM + asymmetric pseudo-labelling (Zhou et al., ECCV "
                                                             "2022)"),
    "em-pl": LossSpec(em_pl_loss, uses_pseudo=True, source="VLPL's EM_PL loss on the [damp] pseudo-labels"),
    "vlpl": LossSpec(em_pl_loss, uses_pseudo=True, pseudo_labels=vlpl_selection,
                     source="VLPL: CLIP global-view pseudo-labels + EM_PL (Xing et al., CVPRW 2024)"),
    "ll-r": LossSpec(ll_loss, method=LLRMethod, source="LL-R: reject large losses (Kim et al., CVPR 2022)",
                     defaults=_own("ll-r")),
    "ll-ct": LossSpec(ll_loss, method=LLCtMethod, source="LL-Ct: correct large losses, temporarily (Kim et al., "
                                                         "CVPR 2022)", defaults=_own("ll-ct")),
    "ll-cp": LossSpec(ll_loss, method=LLCpMethod, source="LL-Cp: correct large losses, permanently (Kim et al., "
                                                         "CVPR 2022)", defaults=_own("ll-cp")),
    "boostlu": LossSpec(ll_loss, method=BoostLUMethod, needs_spatial=True,
                        source="BoostLU on LL-R: boosted class activation maps (Kim et al., CVPR 2023)",
                        defaults=_own("boostlu")),
    "mime": LossSpec(mime_loss, method=MimeMethod, needs_spatial=True,
                     source="MIME: per-class Gaussian latents, pseudo-positives above 0.95 (Liu et al., ICML 2023)"),
    "smile": LossSpec(smile_loss, method=SmileMethod, needs_spatial=True,
                      source="SMILE: per-class Beta label distributions (Xu et al., NeurIPS 2022; image code of "
                             "the MIME authors)"),
}.items():
    register_loss(_name, _spec)
