"""Gallery storage formats: what a deployment keeps per enrolled image, what that costs in retrieval, and how fast it
searches.

Formats (each gallery embedding is L2-normalised first, as the cosine search expects):

* ``float32``: the reference, 4 bytes per dimension.
* ``float16``: 2 bytes per dimension; scores computed in float32 from the stored halves.
* ``int8``: one global symmetric scale (the largest magnitude of the enrolled set / 127), 1 byte per dimension plus
  the scale; the query is quantized the same way and scored with an int32 dot product, as an int8 matcher on a
  phone or MCU would. The codes are kept as offset binary (uint8 = value + 128, zero point 128), the layout integer
  GEMM kernels take fast (unsigned gallery x signed query: VNNI on x86, dot-product instructions on ARM): with
  onnxruntime installed the search is its ``MatMulInteger`` (exact int32, 3.5x faster than float32's BLAS at 100k x
  256 here); without it (the arm64 board's evaluator) numpy sums the same integers, exactly, more slowly.
* ``binary``: the sign of each dimension, 1 bit per dimension; similarity = dimensions minus the Hamming distance
  (sign-bit codes: Charikar 2002, "Similarity estimation techniques from rounding algorithms"), computed as a
  popcount of the XOR of 64-bit words (``np.bitwise_count``; a 256-entry table on numpy < 2).
* ``pcaK`` (e.g. ``pca128``): the L2-normalised embedding minus the mean, projected on the first K principal
  components, re-normalised, stored as float32 (4K bytes): PCA fitted on the artifact's own embeddings of training
  images (`fit_pca`; `mobilereid evaluate` embeds up to 500 evenly spaced images of ``bounding_box_train`` with the
  artifact on the host, as a deployment would fit it offline and ship the projection with the app). The query is
  projected the same way before the search, and the search time includes that projection.

Search time is the time to score one query against N stored codes and take the best (top-1), on this machine with
numpy, for N = 1k / 10k / 100k random codes of the artifact's dimension (the evaluation split is smaller than a
real gallery); the median over a few queries. It is a host time, like every latency the report names with its CPU.
"""

from __future__ import annotations

import functools
import re
import time

import numpy as np

from .errors import MobileReIDError
from .metrics import evaluate_rank, l2_normalize

FORMATS = ("float32", "float16", "int8", "binary")
INT8_ZERO_POINT = 128  # int8 codes are stored as offset binary: uint8 = value + 128
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed sign bits as uint64 words (rows zero-padded to a multiple of 8 bytes): XOR and popcount 64 dimensions
    at a time. The padding is zero in query and gallery alike, so it adds nothing to a Hamming distance."""
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def pca_dims(fmt: str) -> int | None:
    """K of a ``pcaK`` format, None for the others."""
    m = re.fullmatch(r"pca(\d+)", fmt)
    return int(m.group(1)) if m else None


def parse_formats(text: str) -> list[str]:
    """``"float16,int8,pca128"`` -> ["float16", "int8", "pca128"]; an unknown name is a one-line error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FORMATS and not (pca_dims(n) or 0) > 0]
    if unknown:
        raise MobileReIDError(
            f"--gallery-formats: unknown format(s) {', '.join(unknown)} (known: {', '.join(FORMATS)}, pcaK)"
        )
    return list(dict.fromkeys(names))


def fit_pca(embeddings: np.ndarray, k: int) -> dict:
    """Mean and first ``k`` principal components (rows) of the L2-normalised ``embeddings``."""
    x = l2_normalize(np.asarray(embeddings, np.float64))
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32)}


def project(x: np.ndarray, pca: dict) -> np.ndarray:
    return l2_normalize((l2_normalize(np.asarray(x, np.float32)) - pca["mean"]) @ pca["components"].T)


def sign_vectors(x: np.ndarray) -> np.ndarray:
    """The binary code as a vector of +-1 (+1 where the value is > 0, as ``encode`` sets a bit): the cosine of two
    such vectors is (D - 2 x Hamming) / D, the binary format's similarity on the cosine's scale."""
    return np.where(np.asarray(x) > 0, 1.0, -1.0).astype(np.float32)


def encode(gallery: np.ndarray, fmt: str, pca: dict | None = None) -> dict:
    """The stored form of a gallery: {"codes": array, "scale": float or None} (and the projection for pcaK)."""
    if pca_dims(fmt):
        return {"codes": project(gallery, pca).astype(np.float32), "scale": None, "pca": pca}
    g = l2_normalize(np.asarray(gallery, np.float32))
    if fmt == "float32":
        return {"codes": g, "scale": None}
    if fmt == "float16":
        return {"codes": g.astype(np.float16), "scale": None}
    if fmt == "int8":
        scale = float(np.abs(g).max()) / 127 or 1.0
        codes = np.clip(np.round(g / scale), -127, 127).astype(np.int8)
        return {"codes": codes.view(np.uint8) ^ np.uint8(INT8_ZERO_POINT), "scale": scale}
    if fmt == "binary":
        return {"codes": _words(np.packbits(g > 0, axis=1)), "scale": None}
    raise MobileReIDError(f"unknown gallery format {fmt!r}")


def similarity(query: np.ndarray, stored: dict, fmt: str, dim: int) -> np.ndarray:
    """Similarity of each query to each stored gallery item (higher = more alike), as the format computes it."""
    q = l2_normalize(np.asarray(query, np.float32))
    codes = stored["codes"]
    if pca_dims(fmt):
        return project(q, stored["pca"]) @ codes.T
    if fmt == "float32":
        return q @ codes.T  # BLAS, no copy of the gallery
    if fmt == "float16":  # halves read as they are, summed in float32 (no copy of the gallery: 2x faster than one)
        return np.einsum("qd,nd->qn", q, codes, dtype=np.float32)
    if fmt == "int8":
        qi = np.clip(np.round(q / stored["scale"]), -127, 127).astype(np.int8)
        return _int8_dot(qi, codes).astype(np.float32)
    x = np.bitwise_xor(_words(np.packbits(q > 0, axis=1))[:, None, :], codes[None, :, :])
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount per 64-bit word
        hamming = np.bitwise_count(x).sum(-1, dtype=np.int32)
    else:
        hamming = _POPCOUNT[x.view(np.uint8)].sum(-1, dtype=np.int32)
    return (dim - hamming).astype(np.float32)


def int8_values(codes: np.ndarray) -> np.ndarray:
    """The signed int8 values of stored ``int8`` codes (offset binary)."""
    return (codes ^ np.uint8(INT8_ZERO_POINT)).view(np.int8)


def _int8_dot(qi: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact int32 dot products of int8 queries (Q x D) with offset-binary codes (N x D), Q x N."""
    session = _int8_gemm(codes.shape[1])
    if session is not None:  # gallery as A (N x D, zero point 128), queries as B (D x Q): one pass over the gallery
        return session.run(None, {"gallery": codes, "queries": np.ascontiguousarray(qi.T)})[0].T
    # numpy: the codes read as they are, summed in int32 (no int32 copy of the gallery), the zero point taken out
    raw = np.einsum("qd,nd->qn", qi, codes, dtype=np.int32)
    return raw - INT8_ZERO_POINT * qi.sum(1, dtype=np.int32)[:, None]


@functools.lru_cache(maxsize=8)
def _int8_gemm(dim: int):
    """An onnxruntime session computing ``MatMulInteger(gallery uint8 - 128, queries int8)`` in int32, or None where
    onnx or onnxruntime is not installed."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["gallery", "queries", "zero_point"], ["scores"])],
        "int8_gallery_search",
        [
            helper.make_tensor_value_info("gallery", TensorProto.UINT8, ["N", dim]),
            helper.make_tensor_value_info("queries", TensorProto.INT8, [dim, "Q"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, ["N", "Q"])],
        initializer=[helper.make_tensor("zero_point", TensorProto.UINT8, [], [INT8_ZERO_POINT])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bytes_per_item(fmt: str, dim: int) -> int:
    if pca_dims(fmt):
        return 4 * pca_dims(fmt)
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": (dim + 7) // 8}[fmt]


def search_ms(fmt: str, dim: int, sizes=(1_000, 10_000, 100_000), queries: int = 5, seed: int = 0) -> dict:
    """Median milliseconds to score one query against N stored codes and take the best, for each N."""
    rng = np.random.default_rng(seed)
    out = {}
    k = pca_dims(fmt)
    pca = None
    if k:  # a random orthonormal projection: the search costs the same as with a fitted one
        basis, _ = np.linalg.qr(rng.normal(size=(dim, k)))
        pca = {"mean": np.zeros(dim, np.float32), "components": basis.T.astype(np.float32)}
    for n in sizes:
        stored = encode(rng.normal(size=(n, dim)).astype(np.float32), fmt, pca)
        qs = rng.normal(size=(queries + 1, dim)).astype(np.float32)
        times = []
        for q in qs:
            t0 = time.perf_counter()
            int(np.argmax(similarity(q[None], stored, fmt, dim)[0]))
            times.append(1000 * (time.perf_counter() - t0))
        out[str(n)] = float(np.median(times[1:]))  # the first run warms caches
    return out


def compare_formats(
    q, g, q_pids, g_pids, q_cams, g_cams, formats: list[str], sizes=(1_000, 10_000, 100_000), fit=None
) -> list:
    """For each format: mAP and Rank-1 of the query/gallery search with the gallery stored that way, the change
    against float32, bytes per gallery item, search time per query at each gallery size, and ``top1``: each query's
    best gallery index (what a device's search is checked against). ``fit``: the artifact's embeddings of training
    images, which pcaK formats are fitted on (each row gets its ``pca``)."""
    dim = int(np.asarray(g).shape[1])
    labels = tuple(np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    rows, base = [], None
    for fmt in ["float32"] + [f for f in formats if f != "float32"]:
        k = pca_dims(fmt)
        pca = None
        if k:
            if fit is None or len(fit) <= k:
                raise MobileReIDError(
                    f"--gallery-formats {fmt}: PCA needs more than {k} training images embedded by the artifact "
                    f"(got {0 if fit is None else len(fit)})"
                )
            if k >= dim:
                raise MobileReIDError(f"--gallery-formats {fmt}: K must be below the embedding size ({dim})")
            pca = fit_pca(fit, k)
        stored = encode(g, fmt, pca)
        sim = similarity(q, stored, fmt, dim)
        cmc, mAP, _ = evaluate_rank(-sim, *labels)
        row = {
            "format": fmt,
            "mAP": float(mAP),
            "rank1": float(cmc[0]),
            "bytes_per_item": bytes_per_item(fmt, dim),
            "search_ms": search_ms(fmt, dim, sizes),
            "top1": [int(i) for i in np.argmax(sim, axis=1)],
            **({"pca": {"k": k, "fit_images": len(fit), **pca}} if k else {}),
            **({"scale": stored["scale"]} if stored.get("scale") is not None else {}),
        }
        base = base or row
        row["delta_mAP"] = row["mAP"] - base["mAP"]
        row["storage_ratio"] = base["bytes_per_item"] / row["bytes_per_item"]
        rows.append(row)
    return rows


def device_agreement(host_rows: list, device_rows: list, emulated: bool) -> list:
    """The gallery search run on the device (its evaluator, the same numpy code, on the device's own embeddings)
    against the host's search of those embeddings: per format, the device's mAP minus the host's and the fraction
    of queries whose best gallery item is the same; the device's search times, marked ``emulated`` on an emulated
    board (emulation time is no latency)."""
    host = {r["format"]: r for r in host_rows}
    out = []
    for d in device_rows:
        h = host.get(d["format"])
        if h is None:
            continue
        same = float(np.mean(np.asarray(d["top1"]) == np.asarray(h["top1"])))
        out.append(
            {
                "format": d["format"],
                "mAP": d["mAP"],
                "mAP_minus_host": d["mAP"] - h["mAP"],
                "top1_same_as_host": same,
                "search_ms": d["search_ms"],
                "emulated": emulated,
            }
        )
    return out
