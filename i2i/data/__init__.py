"""Built-in datasets; importing this package registers them."""

from i2i.data import aligned, colorization, degrade, edges, paired_folders, synthetic  # noqa: F401  (registration)
from i2i.data.base import PairedDataset

__all__ = ["PairedDataset"]
