"""Deployment matching numbers (mobilereid/matching.py) on embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from mobilereid.matching import (
    compatibility,
    compatibility_problem,
    equal_error_rate,
    far_spread,
    open_set,
    pair_scores,
    person_keys,
    rates,
    threshold_at_far,
    verification,
)
from mobilereid.metrics import rank_summary


def _split(seed: int = 0, ids: int = 40, dim: int = 32, noise: float = 0.5):
    """Query and gallery embeddings of ``ids`` people (an identity centre plus noise), cameras 0/1 for query/gallery,
    and a few gallery distractors (pid 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids + 1, dim))
    q_pids = np.repeat(np.arange(1, ids + 1), 2)
    g_pids = np.concatenate([np.repeat(np.arange(1, ids + 1), 3), np.zeros(10, int)])
    q = centres[q_pids] + noise * rng.normal(size=(len(q_pids), dim))
    g = centres[g_pids] + noise * rng.normal(size=(len(g_pids), dim))
    return q, g, q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int)


def test_pairs_are_cross_camera_and_leave_junk_out():
    q = np.eye(3)
    g = np.eye(3)
    pos, neg = pair_scores(q, g, [1, 2, -1], [1, 2, 2], [0, 0, 0], [1, 0, 1])
    # positives: q1-g1 (similarity 1) and q2-g3 (0); gallery 2 shares query 2's camera: left out; junk query left out
    assert sorted(pos.tolist()) == [0.0, 1.0] and len(neg) == 2  # q1-g3 and q2-g1


def test_threshold_keeps_the_false_accept_rate_at_most_the_target():
    neg = np.linspace(-1, 1, 10001)
    for far in (1e-1, 1e-2, 1e-3):
        t = threshold_at_far(neg, far)
        assert rates(np.array([2.0]), neg, t)[1] <= far
        assert rates(np.array([2.0]), neg, t - 1e-3)[1] > far  # and it is the lowest such threshold


def test_equal_error_rate_of_separable_and_of_identical_scores():
    assert equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0.0
    rng = np.random.default_rng(0)
    same = rng.normal(size=20000)
    assert equal_error_rate(same, rng.normal(size=20000)) == pytest.approx(0.5, abs=0.02)


def test_threshold_fitted_on_one_half_is_measured_on_the_other():
    v = verification(*_split(), target_far=1e-2)
    t = v["threshold"]
    assert t["held_out_pairs"]["positive"] > 0 and t["held_out_pairs"]["negative"] > 0
    assert 0 <= t["held_out_far"] <= 0.1 and t["held_out_tar"] > 0.5
    assert 0 <= v["eer"] < 0.2 and v["tar_at_far"]["0.01"] >= v["tar_at_far"]["0.001"]
    assert len(v["roc"]["far"]) == len(v["roc"]["tar"])


def _far_spread_pair_by_pair(sim, qp, gp, qc, gc, threshold, draws=400):
    """far_spread's FARs written out pair by pair: every negative pair weighted by its two people's draw counts."""
    q_key, g_key = person_keys(qp, gp)
    people, person = np.unique(np.concatenate([q_key, g_key]), return_inverse=True)
    w = np.random.default_rng(0).multinomial(len(people), np.full(len(people), 1 / len(people)), size=draws)
    wq, wg = w[:, person[: len(qp)]], w[:, person[len(qp) :]]
    usable = (qc[:, None] != gc[None, :]) & (gp[None, :] != -1) & (qp[:, None] != -1)
    negative = usable & (qp[:, None] != gp[None, :])
    weight = wq[:, :, None] * wg[:, None, :] * negative
    return (weight * (sim > threshold)).sum((1, 2)) / weight.sum((1, 2))


def test_far_spread_counts_every_negative_pair_once_per_way_its_people_were_drawn():
    rng = np.random.default_rng(3)
    qp = rng.integers(-1, 12, 60)  # junk (-1), distractors (0) and 11 people, on both sides
    gp = rng.integers(-1, 12, 90)
    qc, gc = rng.integers(0, 3, 60), rng.integers(0, 3, 90)
    sim = rng.uniform(-1, 1, (60, 90))
    usable = (qc[:, None] != gc[None, :]) & (gp[None, :] != -1) & (qp[:, None] != -1)
    negative = usable & (qp[:, None] != gp[None, :])
    threshold = threshold_at_far(sim[negative], 0.05)
    drawn = _far_spread_pair_by_pair(sim, qp, gp, qc, gc, threshold)
    low, high = far_spread(qp, gp, qc, gc, np.nonzero(negative & (sim > threshold)))
    assert low == pytest.approx(np.percentile(drawn, 10)) and high == pytest.approx(np.percentile(drawn, 90))
    q_key, g_key = person_keys(qp, gp)  # each distractor image is a person of its own, queries and gallery apart
    assert len(set(q_key[qp == 0]) | set(g_key[gp == 0])) == (qp == 0).sum() + (gp == 0).sum()
    assert set(q_key[qp > 0]) <= set(range(1, 12)) and (g_key[gp == 0] < 0).all()


def test_far_spread_is_narrow_for_many_people_and_wide_when_one_pair_makes_the_tail():
    rng = np.random.default_rng(0)
    qp, gp = np.repeat(np.arange(1, 41), 4), np.repeat(np.arange(1, 41), 5)
    qc, gc = np.zeros(len(qp), int), np.ones(len(gp), int)
    sim = rng.normal(size=(len(qp), len(gp)))
    negative = qp[:, None] != gp[None, :]
    threshold = threshold_at_far(sim[negative], 1e-2)
    low, high = far_spread(qp, gp, qc, gc, np.nonzero(negative & (sim > threshold)))
    assert 0.5e-2 < low < 1e-2 < high < 2e-2  # every pair of people adds to the tail alike
    look_alikes = negative & (((qp[:, None] == 1) & (gp[None, :] == 2)) | ((qp[:, None] == 2) & (gp[None, :] == 1)))
    low, high = far_spread(qp, gp, qc, gc, np.nonzero(look_alikes))  # only people 1 and 2's 40 pairs are accepted
    assert low == 0.0 and high > 2 * 40 / negative.sum()  # resamples leave one of the two out, or draw them twice


def test_a_threshold_set_by_one_look_alike_pair_warns():
    q, g, qp, gp, qc, gc = _split(ids=100, noise=0.5)
    spread = verification(q, g, qp, gp, qc, gc, target_far=1e-2)["threshold"]
    assert spread["tail_identity_pairs"] >= 10 and "warning" not in spread
    assert 0.5e-2 <= spread["far_spread"][0] < spread["far_spread"][1] <= 2e-2
    natural = verification(q, g, qp, gp, qc, gc, target_far=1e-3)["threshold"]["tail_identity_pairs"]
    g = g.copy()
    look_alike = q[qp == 2][0] + 0.01 * np.random.default_rng(2).normal(size=(3, q.shape[1]))
    g[gp == 4] = look_alike  # even ids 2 and 4 look alike
    clumped = verification(q, g, qp, gp, qc, gc, target_far=1e-3)["threshold"]
    assert natural > 7 and clumped["tail_identity_pairs"] < natural / 1.5
    low, high = clumped["far_spread"]
    assert "look-alike people" in clumped["warning"] and (low < 0.5e-3 or high > 2e-3)


def test_compatibility_of_the_same_space_and_of_a_rotated_one():
    q, g, qp, gp, qc, gc = _split()
    same = compatibility(q, g, q, g, qp, gp, qc, gc)
    assert same["cosine_mean"] == pytest.approx(1.0) and compatibility_problem(same, same["mixed_mAP"]) is None
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(q.shape[1], q.shape[1])))
    moved = compatibility(q @ rotation, g, q, g @ rotation, qp, gp, qc, gc)  # an artifact in another space
    own = rank_summary(q @ rotation, g @ rotation, qp, gp, qc, gc)["mAP"]  # rotation keeps its own retrieval
    assert moved["cosine_mean"] < 0.5 and moved["mixed_mAP"] < same["mixed_mAP"] - 0.3
    problem = compatibility_problem(moved, own)
    assert problem is not None and "re-enrol the gallery" in problem


def test_open_set_rates_of_hand_made_searches():
    # 2-D embeddings: queries 1 and 2 find themselves; query 3 is closest to person 1; a distractor query (pid 0)
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.7, 0.7]])
    g = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    o = open_set(q, g, [1, 2, 3, 0], [1, 2, 3], [0, 0, 0, 0], [1, 1, 1], threshold=0.5)
    assert o["known_queries"] == 3 and o["distractor_queries"] == 1
    assert o["known_matched_right"] == pytest.approx(2 / 3) and o["known_matched_wrong"] == pytest.approx(1 / 3)
    assert o["known_rejected"] == 0.0
    # not enrolled: q1 without person 1 (best 0.0), q2 without person 2 (0.0), q3 without 3 (0.99: matched), pid 0
    # query (0.71: matched)
    assert o["unknown_queries"] == 4 and o["unknown_false_match"] == pytest.approx(0.5)
    strict = open_set(q, g, [1, 2, 3, 0], [1, 2, 3], [0, 0, 0, 0], [1, 1, 1], threshold=0.995)
    # q3's best score is 0.994: now rejected; q1 and q2 still found (1.0)
    assert strict["known_rejected"] == pytest.approx(1 / 3) and strict["known_matched_right"] == pytest.approx(2 / 3)
    assert strict["unknown_false_match"] == 0.0


def test_verification_reports_open_set_on_the_held_out_half():
    o = verification(*_split(), target_far=1e-2)["open_set"]
    assert o["known_queries"] == 40  # the odd half of 40 identities, two queries each
    assert o["known_matched_right"] > 0.8 and o["unknown_false_match"] < 0.5
