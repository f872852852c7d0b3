"""Baseline detector networks, built from MONAI: a denoising autoencoder and a small patch classifier.

MONAI is imported inside the builders: importing it costs seconds, and only these two detectors need it
(scoring with BTD, or any command that merely imports the detectors, should not wait for it)."""

from __future__ import annotations

from torch import nn


def denoising_autoencoder(channels=(16, 32, 64)) -> nn.Module:
    """Convolutional autoencoder (strided residual units) for 2-D single-channel patches; sides divisible by 8."""
    from monai.networks.nets import AutoEncoder

    return AutoEncoder(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(channels),
                       strides=(2,) * len(channels), num_res_units=1)


def patch_classifier(size: int, channels=(8, 16, 32, 64)) -> nn.Module:
    """Strided CNN giving one logit (tampered vs genuine) per size×size single-channel patch."""
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(1, size, size), classes=1, channels=tuple(channels), strides=(2,) * len(channels))
