"""Gallery storage formats (mobilereid/gallery.py) on embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from mobilereid.errors import MobileReIDError
from mobilereid.gallery import bytes_per_item, compare_formats, encode, parse_formats, similarity


def _split(seed=0, ids=30, dim=64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids + 1, dim))
    q_pids, g_pids = np.repeat(np.arange(1, ids + 1), 2), np.repeat(np.arange(1, ids + 1), 3)
    q = centres[q_pids] + 0.6 * rng.normal(size=(len(q_pids), dim))
    g = centres[g_pids] + 0.6 * rng.normal(size=(len(g_pids), dim))
    return q, g, q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int)


def test_each_format_scores_like_its_definition():
    q, g = np.array([[1.0, -2.0, 0.5, 3.0]]), np.array([[2.0, 1.0, -1.0, 0.5], [-1.0, -1.0, 1.0, 1.0]])
    qn, gn = q / np.linalg.norm(q), g / np.linalg.norm(g, axis=1, keepdims=True)
    assert similarity(q, encode(g, "float32"), "float32", 4) == pytest.approx(qn @ gn.T, abs=1e-6)
    assert similarity(q, encode(g, "float16"), "float16", 4) == pytest.approx(qn @ gn.T, abs=2e-3)
    stored = encode(g, "int8")
    assert stored["codes"].dtype == np.int8 and np.abs(stored["codes"]).max() == 127
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
