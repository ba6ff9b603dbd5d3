"""Image augmentation for replay batches: DrQ's random shift (pad, then crop back at a random offset per sample)."""

from __future__ import annotations

from typing import Any

import torch as th
from torch.nn import functional as F

__all__ = ["AUGMENTATIONS", "random_shift", "shift_pair"]

#: The ``augment`` choices of TD3CNN.
AUGMENTATIONS = ("shift",)


def random_shift(images: th.Tensor, pad: int, offsets: th.Tensor | None = None) -> th.Tensor:
    """Shift each image by up to ``pad`` pixels: replicate-pad the borders, then crop the original size back.

    ``(batch, C, H, W) -> (batch, C, H, W)``, any dtype (uint8 replay images are shifted before scaling). All channels
    of a sample (every frame of a stack) move together.

    :param images: the image batch
    :param pad: the largest shift in pixels, >= 0
    :param offsets: ``(batch, 2)`` integer (row, column) crop offsets in ``[0, 2 * pad]``; None draws them uniformly
        with torch's random generator
    :return: the shifted images
    """
    if pad == 0:
        return images
    batch, _, height, width = images.shape
    if offsets is None:
        offsets = th.randint(0, 2 * pad + 1, (batch, 2), device=images.device)
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate").to(images.dtype)
    rows = offsets[:, :1] + th.arange(height, device=images.device)  # (batch, H)
    cols = offsets[:, 1:] + th.arange(width, device=images.device)  # (batch, W)
    samples = th.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing moves the channel axis last: (batch, H, W, C) -> (batch, C, H, W).
    return padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def shift_pair(observations: Any, next_observations: Any, pad: int, image_key: str = "image") -> tuple[Any, Any]:
    """Shift obs and next obs images of a replay batch, each sample's pair by the same random offset.

    The same offset keeps a frame-stacked pair a shifted pair (the shared encoder then still encodes the common
    frames once) and shows the TD target the view the critic is trained on. Vector keys pass unchanged.

    :param observations: a batch of image tensors, or a dict holding them under ``image_key``
    :param next_observations: the matching next observations
    :param pad: the largest shift in pixels
    :param image_key: the image's key in dict observations
    :return: the shifted (observations, next_observations)
    """
    images = observations[image_key] if isinstance(observations, dict) else observations
    offsets = th.randint(0, 2 * pad + 1, (images.shape[0], 2), device=images.device)

    def shift(obs: Any) -> Any:
        if isinstance(obs, dict):
            return {**obs, image_key: random_shift(obs[image_key], pad, offsets)}
        return random_shift(obs, pad, offsets)

    return shift(observations), shift(next_observations)
