"""Deployment matching: the numbers a ReID deployment decides with, beyond Rank-k and mAP.

* **Same-person decision** (face-verification style, as ReID deployments use it: a new crop is "the same person" when
  its cosine similarity to an enrolled embedding is above a threshold). Pairs are every query x gallery pair from
  different cameras (the Market-1501 protocol's cross-camera rule); same identity = positive, different identity
  (distractors included) = negative; junk (pid -1) is left out. Reported: TAR at FAR 1e-2 and 1e-3, the equal error
  rate, and the threshold at a target FAR. The threshold is *calibrated* on half of the identities (even pids) and its
  FAR and TAR are *measured* on the other half (odd pids), so the report says how well a threshold chosen on one
  population holds on another, instead of quoting the FAR it was fitted to.
* **Open set** (`open_set`): with that threshold, on the held-out half, how often a search for an enrolled person
  returns them, rejects them or returns someone else, and how often a person who never enrolled is matched to someone.
* **Compatibility with the user's model**: a gallery enrolled with the user's float model and queried with the
  artifact (mixed search): its mAP and Rank-1 next to the artifact's own. Cosine to the user's embeddings says whether
  the spaces agree; mixed-search mAP says whether it matters for retrieval.

numpy only (no torch), so the same code can run beside the on-device evaluator.
"""

from __future__ import annotations

import numpy as np

from .metrics import l2_normalize, rank_summary

FARS = (1e-2, 1e-3)
# A threshold is flagged when, over identity resamples of the people it was fitted on, the false accept rate it gives
# leaves this factor of its target (10th-90th percentile; the same 2x band the held-out half is judged by). Measured on
# 52 thresholds (26 artifacts, FAR 1e-2 and 1e-3, 50-250 test identities): every one whose held-out FAR missed its
# target by more than 2x was flagged, the closest at 0.45x-1.74x; with the 5th-95th percentile the default job's
# SCL-net at FAR 1e-2 (held out: 1.3x) was flagged too (docs/results/2026-12-07-default-compatible.md).
FAR_SPREAD_FACTOR = 2.0


def pair_scores(q, g, q_pids, g_pids, q_cams, g_cams) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of cross-camera query x gallery pairs: (positives, negatives)."""
    sim, positive, negative = _scored_pairs(q, g, q_pids, g_pids, q_cams, g_cams)
    return sim[positive], sim[negative]


def _scored_pairs(q, g, q_pids, g_pids, q_cams, g_cams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query x gallery cosine matrix and the masks of its positive and negative pairs (cross-camera, no junk)."""
    qp, gp, qc, gc = (np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    sim = l2_normalize(np.asarray(q, np.float64)) @ l2_normalize(np.asarray(g, np.float64)).T
    usable = (qc[:, None] != gc[None, :]) & (gp[None, :] != -1) & (qp[:, None] != -1)
    same = qp[:, None] == gp[None, :]
    return sim, usable & same, usable & ~same


def person_keys(q_pids, g_pids) -> tuple[np.ndarray, np.ndarray]:
    """Each query and gallery image's person: its pid, or for a distractor (pid 0) a key of its own (negative; queries
    and gallery apart), so that a thousand distractor crops count as a thousand people, not one."""
    qp, gp = np.asarray(q_pids), np.asarray(g_pids)
    return np.where(qp == 0, -1 - np.arange(len(qp)), qp), np.where(gp == 0, -1 - len(qp) - np.arange(len(gp)), gp)


def far_spread(q_pids, g_pids, q_cams, g_cams, accepted: tuple, draws: int = 400, percentiles=(10, 90)) -> list[float]:
    """The 10th and 90th percentile (``percentiles``) of the false accept rate over populations drawn like this one:
    the people (``person_keys``) are resampled with replacement, an identity bootstrap, and every negative pair of
    ``pair_scores`` counts once per way its two people were drawn. ``accepted``: the (query, gallery) index arrays of
    the negative pairs the threshold accepts. Pairs of one identity pair are not independent samples, so a tail made
    by a few look-alike people shows here as a wide spread where resampling pairs would not. Seeded.

    Computed per draw without listing the negatives: the weighted count of all negatives is the weighted count of
    the cross-camera pairs, (sum w_i)(sum w_j) minus the same-camera terms, minus that of the same-pid pairs (again
    with their same-camera terms), so time and memory grow with draws x images, not with the pairs."""
    qp, gp, qc, gc = (np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    q_key, g_key = person_keys(qp, gp)
    people, person = np.unique(np.concatenate([q_key, g_key]), return_inverse=True)
    w = np.random.default_rng(0).multinomial(len(people), np.full(len(people), 1 / len(people)), size=draws)
    wq, wg = w[:, person[: len(qp)]].astype(np.float64), w[:, person[len(qp) :]].astype(np.float64)
    wq[:, qp == -1], wg[:, gp == -1] = 0.0, 0.0  # junk pairs are no pairs

    cams = np.unique(np.concatenate([qc, gc]))
    q_cam, g_cam = np.searchsorted(cams, qc), np.searchsorted(cams, gc)

    def cross_camera(qs: np.ndarray, gs: np.ndarray) -> np.ndarray:
        """Weighted count of the cross-camera pairs between queries and gallery items that share a label: the pairs
        of each label minus those of each (label, camera)."""
        labels = np.unique(np.concatenate([qs, gs]))
        q_label, g_label = np.searchsorted(labels, qs), np.searchsorted(labels, gs)
        n = len(labels) * len(cams)
        every = (_group_sums(wq, q_label, len(labels)) * _group_sums(wg, g_label, len(labels))).sum(1)
        return every - (
            _group_sums(wq, q_label * len(cams) + q_cam, n) * _group_sums(wg, g_label * len(cams) + g_cam, n)
        ).sum(1)

    scored = cross_camera(np.zeros(len(qp), int), np.zeros(len(gp), int)) - cross_camera(qp, gp)
    i, j = accepted
    above = np.zeros(draws)
    step = max(1, 2**24 // max(len(i), 1))  # draws at a time: a few hundred MB at most
    for d in range(0, draws, step):
        above[d : d + step] = (wq[d : d + step, i] * wg[d : d + step, j]).sum(1)
    rates_drawn = above / np.maximum(scored, 1)
    return [float(np.percentile(rates_drawn, q)) for q in percentiles]


def _group_sums(weights: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Per row of ``weights`` (draws x items), the sum over the items of each group (0..n-1): draws x n."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if len(groups) else np.array([], int)
    out = np.zeros((weights.shape[0], n))
    if len(starts):
        out[:, sorted_groups[starts]] = np.add.reduceat(weights[:, order], starts, axis=1)
    return out


def threshold_at_far(negatives: np.ndarray, far: float) -> float:
    """The lowest threshold whose false accept rate on ``negatives`` is at most ``far`` (accept: score > threshold)."""
    if len(negatives) == 0:
        return float("nan")
    ordered = np.sort(negatives)[::-1]
    k = int(np.floor(far * len(ordered)))  # at most k negatives may score above the threshold
    return float(ordered[k]) if k < len(ordered) else float(ordered[-1])


def rates(positives: np.ndarray, negatives: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) when scores above ``threshold`` are accepted."""
    tar = float((positives > threshold).mean()) if len(positives) else float("nan")
    far = float((negatives > threshold).mean()) if len(negatives) else float("nan")
    return tar, far


def equal_error_rate(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The error rate where false rejects equal false accepts (thresholds swept over every score)."""
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    thresholds = np.unique(np.concatenate([positives, negatives]))
    pos, neg = np.sort(positives), np.sort(negatives)
    frr = np.searchsorted(pos, thresholds, side="right") / len(pos)  # positives at or below: rejected
    far = 1.0 - np.searchsorted(neg, thresholds, side="right") / len(neg)  # negatives above: accepted
    i = int(np.argmin(np.abs(frr - far)))
    return float((frr[i] + far[i]) / 2)


def roc_curve(positives: np.ndarray, negatives: np.ndarray, points: int = 200) -> dict:
    """TAR against FAR on a log grid of FARs from 1e-4 to 1 (for the ROC plot)."""
    fars = np.logspace(-4, 0, points)
    tars = [rates(positives, negatives, threshold_at_far(negatives, f))[0] for f in fars]
    return {"far": [float(f) for f in fars], "tar": [float(t) for t in tars]}


def verification(q, g, q_pids, g_pids, q_cams, g_cams, target_far: float = 1e-3) -> dict:
    """Same-person decision numbers on all pairs, and the threshold calibrated on even pids, measured on odd pids."""
    pos, neg = pair_scores(q, g, q_pids, g_pids, q_cams, g_cams)
    out = {
        "pairs": {"positive": int(len(pos)), "negative": int(len(neg))},
        "eer": equal_error_rate(pos, neg),
        "tar_at_far": {str(f): rates(pos, neg, threshold_at_far(neg, f))[0] for f in FARS},
        "roc": roc_curve(pos, neg),
    }
    threshold = held_out_threshold(q, g, q_pids, g_pids, q_cams, g_cams, target_far)
    qp, gp = np.asarray(q_pids), np.asarray(g_pids)
    odd_q, odd_g = qp % 2 == 1, gp % 2 == 1
    out["open_set"] = open_set(
        np.asarray(q)[odd_q],
        np.asarray(g)[odd_g],
        qp[odd_q],
        gp[odd_g],
        np.asarray(q_cams)[odd_q],
        np.asarray(g_cams)[odd_g],
        threshold["value"],
    )
    out["threshold"] = threshold
    return out


def held_out_threshold(q, g, q_pids, g_pids, q_cams, g_cams, target_far: float) -> dict:
    """The threshold at ``target_far`` fitted on the even person ids' negative pairs, and the FAR and TAR it gives on
    the odd ones (identities by pid parity; the distractors, pid 0, fall in the even half).

    Negative pairs are not independent samples: the tail that sets a low-FAR threshold often comes from a few pairs of
    look-alike people, and then the threshold says more about them than about the population.
    ``tail_identity_pairs`` is the effective number of identity pairs among the fitting negatives at or above the
    threshold (Kish's effective sample size, (sum n_i)^2 / sum n_i^2 over the pairs' counts n_i: 10 pairs with one
    negative each count 10, one pair with 90 negatives beside nine with one count about 1.2). ``far_spread`` is the
    range of false accept rates the threshold gives over identity resamples of the fitting half (``far_spread``);
    when it leaves ``FAR_SPREAD_FACTOR`` of the target, a ``warning`` says so."""
    qp, gp, qc, gc = (np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    fit_q, fit_g = qp % 2 == 0, gp % 2 == 0
    sim, positive, negative = _scored_pairs(
        np.asarray(q)[fit_q], np.asarray(g)[fit_g], qp[fit_q], gp[fit_g], qc[fit_q], gc[fit_g]
    )
    fit_pos, fit_neg = sim[positive], sim[negative]
    test_pos, test_neg = pair_scores(
        np.asarray(q)[~fit_q], np.asarray(g)[~fit_g], qp[~fit_q], gp[~fit_g], qc[~fit_q], gc[~fit_g]
    )
    threshold = threshold_at_far(fit_neg, target_far)
    tar, far = rates(test_pos, test_neg, threshold)
    q_key, g_key = person_keys(qp[fit_q], gp[fit_g])
    ti, tj = np.nonzero(negative & (sim >= threshold))  # the tail that sets the threshold
    tail_pairs = np.stack([np.minimum(q_key[ti], g_key[tj]), np.maximum(q_key[ti], g_key[tj])], 1)
    _, per_pair = np.unique(tail_pairs, axis=0, return_counts=True)
    tail = float(per_pair.sum() ** 2 / (per_pair**2).sum()) if len(per_pair) else 0.0  # Kish's effective size
    accepted = np.nonzero(negative & (sim > threshold))
    spread = far_spread(qp[fit_q], gp[fit_g], qc[fit_q], gc[fit_g], accepted)
    out = {
        "target_far": target_far,
        "value": threshold,
        "fitted_on": f"even person ids ({len(fit_pos)} positive, {len(fit_neg)} negative pairs)",
        "tail_identity_pairs": round(tail, 1),
        "far_spread": spread,
        "held_out_far": far,
        "held_out_tar": tar,
        "held_out_pairs": {"positive": int(len(test_pos)), "negative": int(len(test_neg))},
    }
    low, high = spread
    if not (target_far / FAR_SPREAD_FACTOR <= low and high <= target_far * FAR_SPREAD_FACTOR):
        why = (
            f"rests on about {tail:.0f} pair(s) of look-alike people"
            if tail < 10
            else f"rests on {tail:.0f} effective pairs of people, too few for it"
        )
        out["warning"] = (
            f"the threshold for FAR {target_far:g} {why}: on other people its false accept rate would lie between "
            f"{low:.2g} and {high:.2g} (80 % of identity resamples); calibrate on more identities (mobilereid data "
            f"synth --test-ids, or a larger evaluation split) or use a larger --far"
        )
    return out


def open_set(q, g, q_pids, g_pids, q_cams, g_cams, threshold: float) -> dict:
    """What the calibrated threshold does to searches, as a deployment sees them (top-1 over the cross-camera gallery,
    accepted when its score is above ``threshold``).

    Known people (queries whose identity is in the gallery from another camera): the fraction matched to the right
    person, rejected (top score at or below the threshold), or matched to someone else. Unknown people: each of
    those queries again with its own identity taken out of the gallery (leave-one-identity-out: the same crops, as
    if the person had never enrolled), plus the distractor queries (pid 0) where the data has them; the fraction
    wrongly matched to an enrolled person is the open-set false match rate."""
    qp, gp, qc, gc = (np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    sim = l2_normalize(np.asarray(q, np.float64)) @ l2_normalize(np.asarray(g, np.float64)).T
    usable = (qc[:, None] != gc[None, :]) & (gp[None, :] != -1)
    same = qp[:, None] == gp[None, :]
    known = (usable & same).any(1) & (qp > 0)
    best = np.where(usable, sim, -np.inf)
    top = best.argmax(1) if len(gp) else np.zeros(len(qp), int)
    top_score = best[np.arange(len(qp)), top] if len(gp) else np.full(len(qp), -np.inf)
    accepted = top_score > threshold
    right = gp[top] == qp if len(gp) else np.zeros(len(qp), bool)
    without_self = np.where(usable & ~same, sim, -np.inf).max(1) if len(gp) else np.full(len(qp), -np.inf)
    unknown = np.concatenate([without_self[known], top_score[qp == 0]])
    n_known = int(known.sum())
    share = lambda mask: float(mask[known].sum() / n_known) if n_known else float("nan")  # noqa: E731
    return {
        "known_queries": n_known,
        "known_matched_right": share(accepted & right),
        "known_rejected": share(~accepted),
        "known_matched_wrong": share(accepted & ~right),
        "unknown_queries": int(len(unknown)),
        "unknown_false_match": float((unknown > threshold).mean()) if len(unknown) else float("nan"),
        "distractor_queries": int((qp == 0).sum()),
    }


def compatibility(q_artifact, g_user, q_user, g_artifact, q_pids, g_pids, q_cams, g_cams) -> dict:
    """Mixed search against the user's model: the artifact's queries against a gallery the user's model enrolled,
    and the reverse; plus the mean cosine of the artifact's embeddings to the user's, image by image."""
    forward = rank_summary(q_artifact, g_user, q_pids, g_pids, q_cams, g_cams)
    backward = rank_summary(q_user, g_artifact, q_pids, g_pids, q_cams, g_cams)
    a = l2_normalize(np.concatenate([q_artifact, g_artifact]).astype(np.float64))
    u = l2_normalize(np.concatenate([q_user, g_user]).astype(np.float64))
    return {
        "mixed_mAP": forward["mAP"],
        "mixed_rank1": forward["rank1"],
        "mixed_mAP_reverse": backward["mAP"],
        "cosine_mean": float((a * u).sum(1).mean()),
    }


def compatibility_problem(
    compat: dict, own_mAP: float, min_cosine: float = 0.9, max_map_gap: float = 0.01
) -> str | None:
    """Why a gallery enrolled with the user's model would not work with this artifact (None when it would)."""
    gap = own_mAP - compat["mixed_mAP"]
    if compat["cosine_mean"] < min_cosine or gap > max_map_gap:
        return (
            f"embeddings are not compatible with your model (cosine {compat['cosine_mean']:.3f}, mixed-search mAP "
            f"{100 * compat['mixed_mAP']:.2f} vs its own {100 * own_mAP:.2f}): re-enrol the gallery with this artifact"
        )
    return None
