"""Test-session set-up: 8 simulated CPU devices (for sharded code) before JAX is imported."""

import os
import sys
import types

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never claim an accelerator.

# Where torch and torchvision are installed (the optional numerics check of tests/test_convert.py):
# the torchvision wheel is built against a CUDA torch, and with the CPU torch its fake-kernel
# registrations fail at import (shared/peers/README.md). The segmentation models don't need them.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))
