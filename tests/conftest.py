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


@pytest.fixture(scope="session")
def judges_dir(request, tmp_path_factory):
    """One judge-classifier cache (metrics.cache_dir) for every test that only needs judges, not a
    fresh training: a judge is keyed by its domain's data, the seed, epochs and batch size, so a
    shared cache gives each test the very classifier it would have trained, and each judge (~5 s of
    CPU) trains once a session. Kept in pytest's cache, so it also outlives the session."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("p2pgan-judges") if cache is not None else tmp_path_factory.mktemp("judges")
