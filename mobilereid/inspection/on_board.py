"""The artifact's op outputs computed on the emulated arm64 board (`mobilereid board setup arm64`): the ARM kernels'
numerics, compared on the host with the float model's. The board runs `mobilereid/device/intermediates.py` with
the numpy-only inspection code; time on an emulated CPU is no latency, so only numerics come from there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..evaluate import DEVICE_MODULES, REPO, parse_qemu

BOARD_MODULES = [
    *DEVICE_MODULES,
    "mobilereid/device/intermediates.py",
    "mobilereid/inspection/__init__.py",
    "mobilereid/inspection/litert_ops.py",
]


def board_intermediates(artifact: Path, inputs: list[np.ndarray], device: str) -> tuple[list[dict], dict]:
    """Per input, canonical tensor name -> {value, scale, op, name}, computed on the board; and the board record."""
    from ..arm64 import Arm64Board

    cpu = parse_qemu(device)
    board = Arm64Board()
    board.require_ready()
    stage = board.stage_dir()
    try:
        for rel in BOARD_MODULES:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, stage / rel)
        shutil.copy(artifact, stage / artifact.name)
        np.save(stage / "inputs.npy", np.stack(inputs))
        where = board.guest_path(stage)
        board.run(
            cpu,
            [
                f"{where}/mobilereid/device/intermediates.py",
                "--model",
                f"{where}/{artifact.name}",
                "--inputs",
                f"{where}/inputs.npy",
                "--out",
                f"{where}/tensors.npz",
            ],
        )
        index = json.loads((stage / "tensors.json").read_text())
        out = [{} for _ in range(index["inputs"])]
        with np.load(stage / "tensors.npz") as z:
            for i in range(index["inputs"]):
                for k, t in index["tensors"].items():
                    out[i][t["canonical"]] = {
                        "value": z[f"t{i}_{k}"],
                        "scale": t["scale"],
                        "op": t["op"],
                        "name": t["name"],
                    }
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out, {"cpu": cpu, "qemu": board.info().get("qemu")}
