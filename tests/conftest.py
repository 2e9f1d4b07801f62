"""Test-wide JAX settings: 4 simulated CPU devices and no silent rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from transformer import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # before JAX's threads exist, as the entry points do

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
