"""Datasets in the SPML layout: registry, loader, observed labels, splits and preparers."""
from aevlp.data.layout import SPMLData, Split, load_dataset, write_layout
from aevlp.data.observe import single_positive
from aevlp.data.registry import DatasetInfo, get_dataset, known_datasets, register_dataset
from aevlp.data.splits import train_val_split

__all__ = ["SPMLData", "Split", "load_dataset", "write_layout", "single_positive", "DatasetInfo",
           "get_dataset", "known_datasets", "register_dataset", "train_val_split"]
