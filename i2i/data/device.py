"""``data.on_device``: the whole training set as one uint8 tensor on the training device.

Crop and flip run there as tensor slicing, with the same (top, left,
flip) per sample as the CPU path (``ImagePairDataset.crop_box``), so a batch is
the same whichever path made it; only the indices cross from the host.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from i2i.data.base import DataError, ImagePairDataset


class DeviceResidentSet:
    def __init__(self, dataset: ImagePairDataset, device: torch.device):
        if not isinstance(dataset, ImagePairDataset):
            raise DataError(
                f"data.on_device: {type(dataset).__name__} does not hold decoded image pairs "
                f"(an i2i.data.base.ImagePairDataset); set data.on_device: false"
            )
        if type(dataset).finish is not ImagePairDataset.finish:
            raise DataError(
                f"data.on_device: {type(dataset).__name__} builds its input on the CPU after the crop; "
                f"set data.on_device: false"
            )
        dataset.prepare()
        if dataset.cache is None:
            raise DataError("data.on_device needs the decoded set in memory; data.cache must not be 'none'")
        self.dataset = dataset
        self.device = device
        self.pixels = torch.from_numpy(dataset.cache).to(device)  # N x S x S x C, uint8

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor | list[str]]:
        ds = self.dataset
        crops = []
        for index in indices:
            top, left, flip, _ = ds.crop_box(index)
            crop = self.pixels[index, top : top + ds.crop, left : left + ds.crop]
            crops.append(crop.flip(1) if flip else crop)
        batch = torch.stack(crops).permute(0, 3, 1, 2).float().mul_(1 / 127.5).sub_(1)  # as base.to_tensor
        return {
            "input": batch[:, : ds.in_channels],
            "target": batch[:, ds.in_channels :],
            "path": [ds.describe(i) for i in indices],
        }

    def batches(self, order: Iterable[int], batch_size: int) -> Iterator[dict[str, torch.Tensor | list[str]]]:
        """Batches over ``order`` (a sampler), the last one short, as a DataLoader without drop_last."""
        chunk: list[int] = []
        for index in order:
            chunk.append(index)
            if len(chunk) == batch_size:
                yield self.batch(chunk)
                chunk = []
        if chunk:
            yield self.batch(chunk)


def device_batches(dataset: ImagePairDataset, order: Iterable[int], batch_size: int, device: torch.device):
    """This epoch's batches from the copy of ``dataset`` on ``device`` (made on first use)."""
    copy = getattr(dataset, "device_copy", None)  # only an ImagePairDataset has one; the others are refused below
    if copy is None or copy.device != device:
        copy = dataset.device_copy = DeviceResidentSet(dataset, device)
    return copy.batches(order, batch_size)
