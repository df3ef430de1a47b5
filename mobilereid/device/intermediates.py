#!/usr/bin/env python3
"""On-device half of `mobilereid inspect --device qemu-arm64`: every op output of a .tflite for a few prepared inputs.

Runs with numpy and LiteRT only (the code is `mobilereid/inspection/litert_ops.py`, copied beside this script):

    python mobilereid/device/intermediates.py --model model_int8.tflite --inputs inputs.npy --out tensors.npz

Writes ``tensors.npz`` (one array per tensor and input: ``t{i}_{k}`` for tensor k of input i) and
``tensors.json`` (per tensor key: canonical name, name, op, int8 scale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the folder holding mobilereid/

import numpy as np  # noqa: E402

from mobilereid.inspection.litert_ops import intermediates  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--inputs", required=True, type=Path, help=".npy of prepared inputs (N, ...) in the model's dtype")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    xs = np.load(args.inputs)
    arrays, index = {}, {}
    for i, tensors in enumerate(intermediates(args.model, list(xs))):
        for k, (canonical, t) in enumerate(tensors.items()):
            arrays[f"t{i}_{k}"] = t["value"]
            index[str(k)] = {"canonical": canonical, "name": t["name"], "op": t["op"], "scale": t["scale"]}
    np.savez(args.out, **arrays)
    args.out.with_suffix(".json").write_text(json.dumps({"inputs": len(xs), "tensors": index}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
