"""Network and spatial transformer (plain torch)."""

from .transform import compose, downsample_image, integrate_velocity, outside_fraction, upsample_field, velocity_fields, warp
from .unet import RegNet, predict_field, predict_fields

__all__ = ["RegNet", "predict_field", "predict_fields", "warp", "compose", "integrate_velocity", "upsample_field",
           "downsample_image", "outside_fraction", "velocity_fields"]
