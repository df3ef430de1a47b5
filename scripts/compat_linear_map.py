"""How close a linear map brings a changed model's embedding back to the user's: the cheapest compatibility fix
(a least-squares "transformation" between embedding spaces, the baseline of cross-model compatibility work such as
Wang et al. 2020, "Unified representation learning for cross model compatibility"), measured before building it.

Both checkpoints embed the training split (the map is fitted there, ridge least squares with an intercept, on the
raw or the L2-normalised embeddings, over a range of ridge weights) and the query/gallery split (where it is scored):
cosine to the user's embedding, the mapped model's own mAP, and the mixed search (mapped queries against a gallery
the user's model enrolled, and the reverse).

    python scripts/compat_linear_map.py --changed WORK/compress/compressed.pt --yours WORK/train_vit/model.pt \\
        --data WORK/data/synth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mobilereid.data.datasets import load_dataset
from mobilereid.embeddings import extract_features, preprocess_spec_for
from mobilereid.matching import compatibility
from mobilereid.metrics import l2_normalize, rank_summary
from mobilereid.models.checkpoint import load_checkpoint


def embed(path: Path, splits: list) -> list[np.ndarray]:
    model, _ = load_checkpoint(path)
    model.eval()
    spec = preprocess_spec_for(model)
    return [extract_features(model, s, spec) for s in splits]


def fit_map(x: np.ndarray, y: np.ndarray, ridge: float):
    """Ridge least squares y ~ (x - mean_x) A + mean_y; ``ridge`` in units of x's variance per dimension."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    a = np.linalg.solve(xc.T @ xc + ridge * xc.var() * np.eye(x.shape[1]), xc.T @ (y - my))
    return lambda z: (z - mx) @ a + my


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changed", type=Path, required=True, help="the checkpoint a stage of ours produced")
    ap.add_argument("--yours", type=Path, required=True, help="the user's float checkpoint")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ridge", default="0,1,10,30,100,300,1000")
    args = ap.parse_args()
    ds = load_dataset(args.data, need_train=True)
    splits = [ds.train, ds.query, ds.gallery]
    ctr, cq, cg = embed(args.changed, splits)
    ytr, yq, yg = embed(args.yours, splits)
    labels = (
        [s.pid for s in ds.query],
        [s.pid for s in ds.gallery],
        [s.camid for s in ds.query],
        [s.camid for s in ds.gallery],
    )

    def cosine(a, b):
        return float((l2_normalize(a) * l2_normalize(b)).sum(1).mean())

    print(f"{len(ctr)} training images; embedding sizes {ctr.shape[1]} (changed) and {ytr.shape[1]} (yours)")
    print(f"your model: mAP {100 * rank_summary(yq, yg, *labels)['mAP']:.2f}")
    print(
        f"changed, no map: cosine {cosine(np.vstack([cq, cg]), np.vstack([yq, yg])):.3f}, "
        f"mAP {100 * rank_summary(cq, cg, *labels)['mAP']:.2f}"
    )
    print("| fitted on | ridge | cosine to yours (test) | (train) | own mAP | mixed mAP | mixed mAP, reverse |")
    print("|---|---|---|---|---|---|---|")
    for normalised in (False, True):
        prep = l2_normalize if normalised else (lambda z: z)
        for ridge in (float(r) for r in args.ridge.split(",")):
            f = fit_map(prep(ctr), prep(ytr), ridge)
            mq, mg = f(prep(cq)), f(prep(cg))
            c = compatibility(mq, yg, yq, mg, *labels)
            print(
                f"| {'normalised' if normalised else 'raw'} embeddings | {ridge:g} | "
                f"{cosine(np.vstack([mq, mg]), np.vstack([yq, yg])):.3f} | {cosine(f(prep(ctr)), ytr):.3f} | "
                f"{100 * rank_summary(mq, mg, *labels)['mAP']:.2f} | {100 * c['mixed_mAP']:.2f} | "
                f"{100 * c['mixed_mAP_reverse']:.2f} |"
            )


if __name__ == "__main__":
    main()
