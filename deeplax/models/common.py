"""What every DeepLab model shares: its base config, input checks and compute dtype."""

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)


def base_model_config() -> ml_collections.ConfigDict:
  """Fields present in every `config.model`; each paper config adds its own."""
  c = ml_collections.ConfigDict()
  c.name = "deeplab_v3"
  c.backbone = "resnet101"
  c.num_classes = 21
  c.output_stride = 16
  c.dtype = "float32"          # computation dtype; parameters float32 (float64 if float64)
  c.bn_momentum = 0.9997       # decay of the running averages (v3 §4.1)
  c.bn_epsilon = 1e-5
  c.bn_axis_name = None        # pmap axis to average BN statistics over (None under jit/mesh)
  c.freeze_bn = False          # use running averages while training (v3 §4.1 fine-tune stage)
  c.remat = False              # jax.checkpoint around backbone units to save memory
  c.align_corners = False      # logit upsampling convention (False: torchvision, True: TF DeepLab)
  return c


def check_images(images, output_stride: int,
                 supported: Sequence[int] = SUPPORTED_OUTPUT_STRIDES) -> None:
  """Clear errors for bad input, before any XLA shape failure."""
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(f"images must be a 4-D array [N, H, W, 3]; got shape {shape}")
  if shape[-1] != 3:
    raise ValueError(f"images must have 3 channels (RGB, NHWC) in the last axis; got shape {shape}")
  if output_stride not in supported:
    raise ValueError(f"unsupported output_stride {output_stride}; supported: {tuple(supported)}")


def compute_dtype(name: str):
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
            "float64": jnp.float64}
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("config.model.dtype='float64' needs 64-bit JAX (JAX_ENABLE_X64=1)")
  if name not in dtypes:
    raise ValueError(f"config.model.dtype must be one of {sorted(dtypes)}; got {name!r}")
  return dtypes[name]
