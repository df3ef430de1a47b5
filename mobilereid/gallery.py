"""Gallery storage formats: what a deployment keeps per enrolled image, what that costs in retrieval, and how fast it
searches.

Formats (each gallery embedding is L2-normalised first, as the cosine search expects):

* ``float32``: the reference, 4 bytes per dimension.
* ``float16``: 2 bytes per dimension; scores computed in float32 from the stored halves.
* ``int8``: one global symmetric scale (the largest magnitude of the enrolled set / 127), 1 byte per dimension plus
  the scale; the query is quantized the same way and scored with an int32 dot product, as an int8 matcher on a
  phone or MCU would.
* ``binary``: the sign of each dimension, 1 bit per dimension; similarity = dimensions minus the Hamming distance
  (sign-bit codes: Charikar 2002, "Similarity estimation techniques from rounding algorithms"), computed with a
  256-entry popcount table on the XOR of packed bytes.

Search time is the time to score one query against N stored codes and take the best (top-1), on this machine with
numpy, for N = 1k / 10k / 100k random codes of the artifact's dimension (the evaluation split is smaller than a
real gallery); the median over a few queries. It is a host time, like every latency the report names with its CPU.
PCA-k (fitted on a training split) is not here yet: the evaluator embeds only query and gallery.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import MobileReIDError
from .metrics import evaluate_rank, l2_normalize

FORMATS = ("float32", "float16", "int8", "binary")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def parse_formats(text: str) -> list[str]:
    """``"float16,int8"`` -> ["float16", "int8"]; an unknown name is a one-line error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise MobileReIDError(
            f"--gallery-formats: unknown format(s) {', '.join(unknown)} (known: {', '.join(FORMATS)})"
        )
    return list(dict.fromkeys(names))


def encode(gallery: np.ndarray, fmt: str) -> dict:
    """The stored form of a gallery: {"codes": array, "scale": float or None}."""
    g = l2_normalize(np.asarray(gallery, np.float32))
    if fmt == "float32":
        return {"codes": g, "scale": None}
    if fmt == "float16":
        return {"codes": g.astype(np.float16), "scale": None}
    if fmt == "int8":
        scale = float(np.abs(g).max()) / 127 or 1.0
        return {"codes": np.clip(np.round(g / scale), -127, 127).astype(np.int8), "scale": scale}
    if fmt == "binary":
        return {"codes": np.packbits(g > 0, axis=1), "scale": None}
    raise MobileReIDError(f"unknown gallery format {fmt!r}")


def similarity(query: np.ndarray, stored: dict, fmt: str, dim: int) -> np.ndarray:
    """Similarity of each query to each stored gallery item (higher = more alike), as the format computes it."""
    q = l2_normalize(np.asarray(query, np.float32))
    codes = stored["codes"]
    if fmt in ("float32", "float16"):
        return q @ codes.astype(np.float32).T
    if fmt == "int8":
        qi = np.clip(np.round(q / stored["scale"]), -127, 127).astype(np.int32)
        return (qi @ codes.astype(np.int32).T).astype(np.float32)
    qb = np.packbits(q > 0, axis=1)
    hamming = _POPCOUNT[np.bitwise_xor(qb[:, None, :], codes[None, :, :])].sum(-1, dtype=np.int32)
    return (dim - hamming).astype(np.float32)


def bytes_per_item(fmt: str, dim: int) -> int:
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": (dim + 7) // 8}[fmt]


def search_ms(fmt: str, dim: int, sizes=(1_000, 10_000, 100_000), queries: int = 5, seed: int = 0) -> dict:
    """Median milliseconds to score one query against N stored codes and take the best, for each N."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        stored = encode(rng.normal(size=(n, dim)).astype(np.float32), fmt)
        qs = rng.normal(size=(queries + 1, dim)).astype(np.float32)
        times = []
        for q in qs:
            t0 = time.perf_counter()
            int(np.argmax(similarity(q[None], stored, fmt, dim)[0]))
            times.append(1000 * (time.perf_counter() - t0))
        out[str(n)] = float(np.median(times[1:]))  # the first run warms caches
    return out


def compare_formats(q, g, q_pids, g_pids, q_cams, g_cams, formats: list[str], sizes=(1_000, 10_000, 100_000)) -> list:
    """For each format: mAP and Rank-1 of the query/gallery search with the gallery stored that way, the change
    against float32, bytes per gallery item, and search time per query at each gallery size."""
    dim = int(np.asarray(g).shape[1])
    labels = tuple(np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    rows, base = [], None
    for fmt in ["float32"] + [f for f in formats if f != "float32"]:
        sim = similarity(q, encode(g, fmt), fmt, dim)
        cmc, mAP, _ = evaluate_rank(-sim, *labels)
        row = {
            "format": fmt,
            "mAP": float(mAP),
            "rank1": float(cmc[0]),
            "bytes_per_item": bytes_per_item(fmt, dim),
            "search_ms": search_ms(fmt, dim, sizes),
        }
        base = base or row
        row["delta_mAP"] = row["mAP"] - base["mAP"]
        row["storage_ratio"] = base["bytes_per_item"] / row["bytes_per_item"]
        rows.append(row)
    return rows
