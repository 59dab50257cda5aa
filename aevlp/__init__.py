"""aevlp: vision-language pseudo-labels (DAMP) + GPR Loss for single-positive multi-label learning."""

__version__ = "0.1.0"
