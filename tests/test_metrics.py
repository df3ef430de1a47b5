import subprocess
import sys

import numpy as np
import pytest

from mobilereid.metrics import cosine_distance, euclidean_distance, evaluate_rank


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Independent per-query loop written from the protocol text (REFERENCE.md section 6)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (distmat[i, j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        matches = [g_pids[j] == q_pids[i] for j in kept]
        if not any(matches):
            continue
        first = matches.index(True)
        cmcs.append([1.0 if k >= first else 0.0 for k in range(min(max_rank, len(g_pids)))])
        hits, precisions = 0, []
        for r, m in enumerate(matches, 1):
            if m:
                hits += 1
                precisions.append(hits / r)
        aps.append(sum(precisions) / hits)
        last = max(r for r, m in enumerate(matches, 1) if m)
        inps.append(hits / last)
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps))


def test_hand_computed_case():
    # one query (pid 1, cam 0); gallery ranked by distance: [pid1 cam0 (removed), pid2, pid1 cam1, pid3, pid1 cam2]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, 3, 1])
    g_cams = np.array([0, 1, 1, 2, 2])
    cmc, mAP, mINP = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    # filtered ranking: pid2 (r1), pid1 (r2, hit), pid3 (r3), pid1 (r4, hit)
    assert cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert mINP == pytest.approx(2 / 4)


def test_query_without_valid_match_is_skipped():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    # query 0 (pid 5, cam 0) only has a same-camera match; query 1 (pid 6) has a cross-camera match at rank 1
    cmc, mAP, mINP = evaluate_rank(distmat, np.array([5, 6]), np.array([5, 6]), np.array([0, 0]), np.array([0, 1]))
    assert cmc[0] == 1.0 and mAP == 1.0 and mINP == 1.0


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]))


def test_all_tied_distances_follow_gallery_order():
    distmat = np.zeros((1, 4))
    g_pids = np.array([2, 1, 3, 1])
    cmc, mAP, mINP = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), np.array([1, 1, 1, 1]), max_rank=4)
    # stable order: gallery index order -> hits at ranks 2 and 4
    assert cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert mINP == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 30, 80
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    distmat = rng.integers(0, 6, (nq, ng)).astype(np.float32)  # many ties on purpose
    got = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk=7)
    want = brute_force(distmat, q_pids, g_pids, q_cams, g_cams, 20)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    assert got[1] == pytest.approx(want[1]) and got[2] == pytest.approx(want[2])


def test_cmc_is_capped_by_gallery_size():
    cmc, _, _ = evaluate_rank(np.array([[0.2, 0.1]]), np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))
    assert len(cmc) == 2


def test_distances():
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    g = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(cosine_distance(q, g), [[0, 1, 0.4], [1, 0, 0.2]], atol=1e-6)
    np.testing.assert_allclose(
        euclidean_distance(q, g), [[1, np.sqrt(2), np.sqrt(20)], [np.sqrt(8), 1, np.sqrt(13)]], atol=1e-5
    )


def test_metrics_import_without_torch():
    code = "import sys, mobilereid.metrics, mobilereid.data.preprocess; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rank_summary_says_how_many_queries_were_scored():
    from mobilereid.metrics import rank_summary

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))
    # query 2 (pid 9) has no gallery image of its identity: not scored
    s = rank_summary(q, g, [1, 2, 9], [1, 2, 1, 2], [0, 0, 0], [1, 1, 2, 2])
    assert s["queries"] == 3 and s["queries_scored"] == 2
