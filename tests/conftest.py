"""Shared fixtures: a tiny synthetic dataset made once per test session (the project makes its own data)."""

from pathlib import Path

import pytest

from mobilereid.data.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """12 identities, 3 cameras, 64x32 images: enough for every split and for training smoke tests."""
    root = tmp_path_factory.mktemp("data") / "synth"
    generate(root, SynthConfig(ids=12, cameras=3, seed=1, height=64, width=32))
    return root


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """24 identities at the default 256x128 size, for preprocessing and export tests."""
    root = tmp_path_factory.mktemp("data") / "synth256"
    generate(root, SynthConfig(ids=24, cameras=4, seed=2))
    return root


@pytest.fixture(scope="session")
def sclnet_ckpt(tmp_path_factory) -> Path:
    """An untrained sclnet_test checkpoint with a 6-identity classifier (seed 0), for export tests."""
    import torch

    from mobilereid.models import build_model
    from mobilereid.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "sclnet_test.pt", build_model("sclnet_test", num_classes=6).eval())
