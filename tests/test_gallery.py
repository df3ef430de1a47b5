"""Gallery storage formats (mobilereid/gallery.py) on embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from mobilereid.errors import MobileReIDError
from mobilereid.gallery import (
    bytes_per_item,
    compare_formats,
    encode,
    fit_pca,
    int8_values,
    parse_formats,
    similarity,
)


def _split(seed=0, ids=30, dim=64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids + 1, dim))
    q_pids, g_pids = np.repeat(np.arange(1, ids + 1), 2), np.repeat(np.arange(1, ids + 1), 3)
    q = centres[q_pids] + 0.6 * rng.normal(size=(len(q_pids), dim))
    g = centres[g_pids] + 0.6 * rng.normal(size=(len(g_pids), dim))
    return q, g, q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int)


def test_int8_search_is_exact_with_and_without_onnxruntime(monkeypatch):
    """The int8 scores are the exact int32 dot products of the signed codes, whichever engine computes them
    (onnxruntime's MatMulInteger here; numpy where onnxruntime is missing, as on the arm64 board)."""
    import mobilereid.gallery as gallery

    rng = np.random.default_rng(3)
    g, q = rng.normal(size=(2000, 96)), rng.normal(size=(7, 96))
    stored = encode(g, "int8")
    qi = np.clip(np.round(q / np.linalg.norm(q, axis=1, keepdims=True) / stored["scale"]), -127, 127)
    expected = qi.astype(np.int64) @ int8_values(stored["codes"]).astype(np.int64).T
    assert gallery._int8_gemm(96) is not None  # the host's stack has onnxruntime
    with_ort = similarity(q, stored, "int8", 96)
    monkeypatch.setattr(gallery, "_int8_gemm", lambda dim: None)
    with_numpy = similarity(q, stored, "int8", 96)
    assert np.array_equal(with_ort, expected) and np.array_equal(with_numpy, expected)


def test_each_format_scores_like_its_definition():
    q, g = np.array([[1.0, -2.0, 0.5, 3.0]]), np.array([[2.0, 1.0, -1.0, 0.5], [-1.0, -1.0, 1.0, 1.0]])
    qn, gn = q / np.linalg.norm(q), g / np.linalg.norm(g, axis=1, keepdims=True)
    assert similarity(q, encode(g, "float32"), "float32", 4) == pytest.approx(qn @ gn.T, abs=1e-6)
    assert similarity(q, encode(g, "float16"), "float16", 4) == pytest.approx(qn @ gn.T, abs=2e-3)
    stored = encode(g, "int8")
    values = int8_values(stored["codes"])
    assert stored["codes"].dtype == np.uint8 and np.abs(values.astype(int)).max() == 127
    assert np.array_equal(stored["codes"].astype(int) - 128, values)  # offset binary
    assert similarity(q, stored, "int8", 4) * stored["scale"] ** 2 == pytest.approx(qn @ gn.T, abs=0.03)
    # binary: dimensions minus the Hamming distance of the sign patterns (+-++ vs ++-+: 2; vs --++: 1)
    assert similarity(q, encode(g, "binary"), "binary", 4).tolist() == [[2.0, 3.0]]


def test_compact_formats_keep_retrieval_close_and_say_what_they_save():
    rows = {r["format"]: r for r in compare_formats(*_split(), ["float16", "int8", "binary"], sizes=(100, 1000))}
    assert rows["float32"]["delta_mAP"] == 0 and rows["float32"]["storage_ratio"] == 1
    assert abs(rows["float16"]["delta_mAP"]) < 1e-3 and abs(rows["int8"]["delta_mAP"]) < 0.01
    assert rows["binary"]["storage_ratio"] == 32 and rows["binary"]["mAP"] > 0.5  # sign bits still find people
    assert rows["int8"]["bytes_per_item"] == 64 and bytes_per_item("binary", 64) == 8
    assert set(rows["int8"]["search_ms"]) == {"100", "1000"} and all(t > 0 for t in rows["int8"]["search_ms"].values())


def test_unknown_format_is_one_line():
    assert parse_formats("int8, binary,int8") == ["int8", "binary"]
    with pytest.raises(MobileReIDError, match="unknown format\\(s\\) pq"):
        parse_formats("int8,pq")


def test_pca_keeps_the_subspace_the_identities_live_in():
    # identities differ only in the first 8 of 64 dimensions; the rest is small noise: PCA-8 finds those 8
    rng = np.random.default_rng(0)
    centres = np.zeros((31, 64))
    centres[:, :8] = rng.normal(size=(31, 8)) * 3
    q_pids, g_pids = np.repeat(np.arange(1, 31), 2), np.repeat(np.arange(1, 31), 3)
    noise = lambda n: 0.3 * rng.normal(size=(n, 64))  # noqa: E731
    q, g = centres[q_pids] + noise(len(q_pids)), centres[g_pids] + noise(len(g_pids))
    fit = centres[rng.integers(1, 31, 300)] + noise(300)
    labels = (q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int))
    rows = {r["format"]: r for r in compare_formats(q, g, *labels, ["pca8", "pca2"], sizes=(100,), fit=fit)}
    pca = fit_pca(fit, 8)
    assert np.abs(pca["components"][:, 8:]).max() < 0.2  # the components span the identity dimensions
    assert rows["pca8"]["bytes_per_item"] == 32 and rows["pca8"]["storage_ratio"] == 8
    assert rows["pca8"]["delta_mAP"] > -0.02 and rows["pca2"]["delta_mAP"] < rows["pca8"]["delta_mAP"]
    assert rows["pca8"]["pca"]["fit_images"] == 300
    projected = similarity(q[:1], encode(g, "pca8", pca), "pca8", 64)
    assert projected.shape == (1, len(g)) and np.abs(projected).max() <= 1 + 1e-5  # cosines of projections


def test_pca_needs_training_embeddings_and_a_smaller_k():
    assert parse_formats("pca128,int8") == ["pca128", "int8"]
    with pytest.raises(MobileReIDError, match="unknown format"):
        parse_formats("pca0")
    with pytest.raises(MobileReIDError, match="training images"):
        compare_formats(*_split(), ["pca16"], sizes=(10,))
    with pytest.raises(MobileReIDError, match="below the embedding size"):
        compare_formats(*_split(), ["pca64"], sizes=(10,), fit=np.ones((100, 64)))
