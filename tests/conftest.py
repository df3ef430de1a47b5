"""Shared fixtures: a tiny synthetic dataset made once per test session (the project makes its own data), and the
untrained sclnet_test checkpoint with its exports to every target, made once per test run.

With pytest-xdist each worker is its own process with its own session fixtures; the checkpoint and its exports are
the same bytes in every worker (seeded, byte-deterministic exports), so the first worker that needs them builds them
in the run's shared temporary folder under a file lock and the others read them there (pytest-xdist's documented
pattern for once-per-run fixtures)."""

import json
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
def run_shared(tmp_path_factory, worker_id) -> Path:
    """A folder every worker of this test run sees (the run's own temporary root; without xdist, the session's)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def once_per_run(shared: Path, name: str, build):
    """``build(folder)`` once per test run under a lock; its JSON-able result is what every worker gets back."""
    from filelock import FileLock

    folder, done = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)  # a worker whose build failed may have left it; the error is then its own
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def sclnet_ckpt(run_shared) -> Path:
    """An untrained sclnet_test checkpoint with a 6-identity classifier (seed 0), for export tests."""

    def build(folder: Path) -> str:
        import torch

        from mobilereid.models import build_model
        from mobilereid.models.checkpoint import save_checkpoint

        torch.manual_seed(0)
        return str(save_checkpoint(folder / "sclnet_test.pt", build_model("sclnet_test", num_classes=6).eval()))

    return Path(once_per_run(run_shared, "sclnet_ckpt", build))


@pytest.fixture(scope="session")
def sclnet_exports(sclnet_ckpt, tiny_dataset, run_shared) -> tuple[Path, list[dict]]:
    """``sclnet_ckpt`` exported to every target with INT8 (``export_checkpoint(..., "all", int8=True)``): the output
    folder and the export results (``artifact`` as a Path). Tests copy an artifact before changing it."""

    def build(folder: Path) -> list:
        from mobilereid.export import export_checkpoint

        return json.loads(
            json.dumps(export_checkpoint(sclnet_ckpt, "all", tiny_dataset, folder / "out", int8=True), default=str)
        )

    results = once_per_run(run_shared, "sclnet_exports", build)
    for r in results:
        r["artifact"] = Path(r["artifact"])
    return run_shared / "sclnet_exports" / "out", results


# Files whose tests convert models or run a whole chain: `make test-fast` leaves them out (CI runs everything).
CONVERT_FILES = {
    "test_export.py",
    "test_export_processes.py",
    "test_external.py",
    "test_tflm.py",
    "test_cnn_families.py",
    "test_quant_sensitivity.py",
    "test_quant_sensitivity_vit.py",
    "test_import.py",
    "test_android_core.py",
    "test_arm64.py",
    "test_recipe_targets.py",
    "test_quant_finetune.py",
    "test_evaluate.py",
    "test_hardening_eval.py",
    "test_inspect.py",
    "test_residual_fold.py",
    "test_quant_sensitivity_map.py",
}
E2E_FILES = {"test_pipeline.py", "test_wheel.py"}


# The longest files first (measured with --durations): `make test` runs files on two workers (--dist loadfile), so a
# long file picked up last would leave one core idle at the end; in this order the short files fill the gaps (the
# Makefile passes --no-loadscope-reorder, else xdist reorders files by their number of tests).
LONGEST_FIRST = [
    "test_export.py",
    "test_external.py",
    "test_cnn_families.py",
    "test_quant_sensitivity.py",
    "test_pipeline.py",
    "test_quant_finetune.py",
    "test_import.py",
    "test_hardening.py",
    "test_inspect.py",
    "test_quant_sensitivity_map.py",
    "test_train.py",
    "test_compute.py",
    "test_tflm.py",
    "test_hardening_lifecycle.py",
    "test_android_core.py",
    "test_export_processes.py",
    "test_quant_sensitivity_vit.py",
    "test_evaluate.py",
    "test_arm64.py",
    "test_residual_fold.py",
    "test_cnn_import.py",
    "test_wheel.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
    for item in items:
        name = item.path.name
        if name in CONVERT_FILES:
            item.add_marker(pytest.mark.convert)
        if name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)
