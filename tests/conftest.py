"""Shared test setup."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread: the models under test are tiny, and OpenMP threads contending for two cores
# (with pytest, servers and child processes alongside) make small kernels 100x slower.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("P2PGAN_THREADS", "1")  # the CLI's default thread policy, pinned for in-process calls


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
