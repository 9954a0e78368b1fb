"""Test-session setup shared by every test file.

Eight host CPU devices so sharding tests can build real meshes (1x1, 8x1, 2x4); this must happen before jax is
imported anywhere in the process.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
