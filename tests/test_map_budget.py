"""The retrieval budget of quant-sensitivity (mobilereid/export/map_budget.py) and its per-query scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilereid.embeddings import preprocess_spec_for
from mobilereid.errors import ExportError
from mobilereid.export.map_budget import RetrievalBudget
from mobilereid.metrics import cosine_distance, evaluate_rank, per_query_scores
from mobilereid.models.checkpoint import load_checkpoint


def test_per_query_scores_average_to_the_protocols_map_and_rank1():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(40, 8)), rng.normal(size=(90, 8))
    qp, gp = rng.integers(1, 12, 40), rng.integers(0, 12, 90)
    qc, gc = rng.integers(0, 3, 40), rng.integers(0, 3, 90)
    ap, top1 = per_query_scores(q, g, qp, gp, qc, gc)
    cmc, mAP, _ = evaluate_rank(cosine_distance(q, g), qp, gp, qc, gc)
    valid = ~np.isnan(ap)
    assert np.nanmean(ap) == pytest.approx(mAP) and top1[valid].mean() == pytest.approx(cmc[0])


class _Torch:
    """A runner made of the float model itself, optionally with noise on its embeddings."""

    def __init__(self, model, noise: float = 0.0):
        self.model, self.noise, self.rng = model, noise, np.random.default_rng(0)

    def embed(self, x):
        with torch.no_grad():
            e = self.model(torch.from_numpy(x)).numpy()
        return e + self.noise * np.abs(e).mean() * self.rng.normal(size=e.shape)


def test_budget_scores_the_float_model_as_no_drop_and_noise_as_a_drop(sclnet_ckpt, tiny_dataset):
    model, _ = load_checkpoint(sclnet_ckpt)
    budget = RetrievalBudget(model, tiny_dataset, preprocess_spec_for(model), max_map_drop=0.5)
    same = budget.score(_Torch(model))
    assert same["search"]["delta_map"] == pytest.approx(0.0, abs=1e-9) and same["search"]["rank1_flips"] == 0
    assert budget.within({"retrieval": same})
    noisy = budget.score(_Torch(model, noise=3.0))
    assert noisy["search"]["rank1_flips"] > 0 and noisy["held_out"]["queries"] > 0
    halves = budget.labels[0] % 2
    assert all(halves[i] == 0 for i in noisy["worst_queries"])  # worst queries come from the search half
    assert len(budget.worst_query_images({"retrieval": noisy}, limit=6)) == 6


def test_budget_refuses_negative_drops_and_folders_without_query(sclnet_ckpt, tmp_path):
    model, _ = load_checkpoint(sclnet_ckpt)
    with pytest.raises(ExportError, match="must be >= 0"):
        RetrievalBudget(model, tmp_path, preprocess_spec_for(model), -1.0)
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(Exception, match="query"):
        RetrievalBudget(model, tmp_path, preprocess_spec_for(model), 0.5)
