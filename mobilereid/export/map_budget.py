"""Retrieval as the quantization budget: `quant-sensitivity --max-map-drop D` (points of mAP against the float model).

ReID has no per-image accuracy, which is why NNCF's accuracy control and ai-edge-quantizer fall back to output MSE
or cosine for it; per-query average precision and rank-1 are the per-item numbers here. The query/gallery split of
the data is halved by person id: even ids are the **search** half (the choice is made on it: fastest candidate
whose mAP is at most D below the float model's there), odd ids the **held-out** half, on which the chosen
candidate's drop is reported (does the budget hold on people it was not chosen on). Gallery distractors (pid 0)
stay in both halves. The queries that lose most AP on the search half under full INT8 are what the layer ranking
is then computed on (`worst_query_images`): the layers that hurt retrieval, not the average embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.datasets import load_dataset
from ..errors import ExportError
from ..metrics import per_query_scores
from .calibration import load_batch

HALVES = ("search", "held_out")


def within_map_budget(candidate: dict, max_map_drop: float) -> bool:
    """A scored candidate's mAP on the search half is at most ``max_map_drop`` points below the float model's."""
    r = candidate.get("retrieval")
    return bool(r) and r["search"]["delta_map"] <= max_map_drop


class RetrievalBudget:
    """The float model's per-query scores on both halves, and the same numbers for any candidate runner."""

    def __init__(self, model, data: str | Path, spec, max_map_drop: float):
        if max_map_drop < 0:
            raise ExportError(f"--max-map-drop {max_map_drop}: must be >= 0 (points of mAP)")
        ds = load_dataset(data, need_train=False)
        if not ds.query or not ds.gallery:
            raise ExportError(f"{data}: --max-map-drop needs a dataset with query/ and bounding_box_test/")
        self.max_map_drop = max_map_drop
        self.q_files, self.g_files = [s.path for s in ds.query], [s.path for s in ds.gallery]
        self.q_images, self.g_images = load_batch(self.q_files, spec), load_batch(self.g_files, spec)
        self.labels = tuple(
            np.asarray(a)
            for a in (
                [s.pid for s in ds.query],
                [s.pid for s in ds.gallery],
                [s.camid for s in ds.query],
                [s.camid for s in ds.gallery],
            )
        )
        model.eval()
        with torch.no_grad():
            fq = model(torch.from_numpy(self.q_images)).numpy()
            fg = model(torch.from_numpy(self.g_images)).numpy()
        self.float = self._scores(fq, fg)

    def _half(self, half: str):
        qp, gp = self.labels[0], self.labels[1]
        parity = 0 if half == "search" else 1
        return qp % 2 == parity, (gp % 2 == parity) | (gp == 0)

    def _scores(self, q: np.ndarray, g: np.ndarray) -> dict:
        qp, gp, qc, gc = self.labels
        out = {}
        for half in HALVES:
            qs, gs = self._half(half)
            ap, top1 = per_query_scores(q[qs], g[gs], qp[qs], gp[gs], qc[qs], gc[gs])
            out[half] = {"ap": ap, "top1": top1, "queries": np.flatnonzero(qs)}
        return out

    def score(self, runner) -> dict:
        """mAP, its drop against the float model (points), rank-1 flips, per half; the worst queries of the search
        half (by AP lost) as query indices."""
        q, g = runner.embed(self.q_images), runner.embed(self.g_images)
        got = self._scores(q, g)
        out = {}
        for half in HALVES:
            ap, top1 = got[half]["ap"], got[half]["top1"]
            ref_ap, ref_top1 = self.float[half]["ap"], self.float[half]["top1"]
            valid = ~np.isnan(ref_ap)
            out[half] = {
                "mAP": float(np.nanmean(ap)),
                "float_mAP": float(np.nanmean(ref_ap)),
                "delta_map": float(100 * (np.nanmean(ref_ap) - np.nanmean(ap))),
                "rank1_flips": int((top1[valid] != ref_top1[valid]).sum()),
                "queries": int(valid.sum()),
            }
        lost = self.float["search"]["ap"] - got["search"]["ap"]
        order = np.argsort(-np.nan_to_num(lost, nan=-np.inf), kind="stable")
        out["worst_queries"] = [int(self.float["search"]["queries"][i]) for i in order[:16]]
        return out

    def within(self, candidate: dict) -> bool:
        return within_map_budget(candidate, self.max_map_drop)

    def worst_query_images(self, candidate: dict, limit: int = 32) -> np.ndarray:
        """The worst queries of ``candidate`` and a gallery match of each (NCHW): the images a layer ranking that
        follows retrieval loss is computed on."""
        qp, gp, qc, gc = self.labels
        picked = []
        for i in candidate["retrieval"]["worst_queries"]:
            picked.append(self.q_images[i])
            match = np.flatnonzero((gp == qp[i]) & (gc != qc[i]))
            if len(match):
                picked.append(self.g_images[match[0]])
            if len(picked) >= limit:
                break
        return np.stack(picked[:limit])
