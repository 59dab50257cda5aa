"""Image preprocessing, in one place: `functional` (plain functions on uint8 tensors and files) and its
twin `transforms` (the same, configured once: a CLIP view's `ViewTransform`, the classifier's `ModelInput`)."""
from aevlp.imaging.functional import (
                                      CLIP_MEAN,
                                      CLIP_STD,
                                      IMAGENET_MEAN,
                                      IMAGENET_STD,
                                      INTERPOLATIONS,
                                      RESIZE_MODES,
                                      STATS,
                                      bad_image,
                                      decode,
                                      load_uint8,
                                      normalize,
                                      resize_view,
                                      to_model_input,
)
from aevlp.imaging.transforms import ModelInput, ViewTransform

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "STATS", "INTERPOLATIONS", "RESIZE_MODES",
           "decode", "bad_image", "resize_view", "normalize", "load_uint8", "to_model_input", "ViewTransform",
           "ModelInput"]
