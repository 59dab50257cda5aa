"""Datasets in the SPML layout: registry, loader, observed labels, splits and preparers."""
from aevlp.data.layout import (
                                Split,
                                SPMLData,
                                image_identity,
                                image_problems,
                                load_dataset,
                                training_data_hash,
                                write_layout,
)
from aevlp.data.observe import single_positive
from aevlp.data.registry import DatasetInfo, get_dataset, known_datasets, register_dataset
from aevlp.data.splits import train_val_split

__all__ = ["SPMLData", "Split", "image_identity", "image_problems", "training_data_hash", "load_dataset",
           "write_layout", "single_positive", "DatasetInfo", "get_dataset", "known_datasets", "register_dataset",
           "train_val_split"]
