"""Golden vectors for the Android demo's Kotlin core (android_demo/reid-core), written by the Python reference
(test support, not part of the installed package).

The Kotlin core must reproduce, exactly, what the exporter and the evaluator do on the host:

- ``preprocess.json``: for real images of a dataset, the decoded pixels (as ARGB ints, what Android's
  ``Bitmap.getPixels`` gives), an optional crop, the artifact's preprocessing/input spec (taken from real sidecars),
  and the expected float tensor (as float32 bit patterns, compared bit for bit) and quantized input values;
- ``gallery.json``: enrolment views, probes, a threshold and the decisions/similarities of the reference gallery
  (template = L2-normalised mean of L2-normalised views; best cosine; match if >= threshold; ties to the first
  enrolled); probes are drawn so that no similarity lies within 1e-4 of the threshold or of the runner-up, so a
  last-bit difference in summation order cannot flip a decision;
- ``latency.json``: latency samples and numpy's percentiles of them;
- ``npz.json``: embeddings and labels the Kotlin writer must store in an ``.npz`` that numpy reads back unchanged;
- the sidecars themselves, copied next to these files.

    python tests/android_golden.py OUT_DIR --data DATASET --sidecar model.tflite.json [--sidecar ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from mobilereid.data.datasets import load_dataset
from mobilereid.data.preprocess import PreprocessSpec, load_rgb, preprocess_array, quantize

FORMAT_VERSION = 1


def argb_ints(rgb: np.ndarray) -> list[int]:
    """uint8 HxWx3 RGB -> ARGB_8888 values (alpha 255) as signed 32-bit ints, row-major, like Bitmap.getPixels."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    argb = (np.uint32(0xFF) << np.uint32(24)) | (r << np.uint32(16)) | (g << np.uint32(8)) | b
    return argb.reshape(-1).view(np.int32).tolist()


def preprocess_case(rgb: np.ndarray, image_name: str, sidecar: dict, crop: tuple[int, int, int, int] | None) -> dict:
    spec = PreprocessSpec.from_dict(sidecar["preprocess"])
    inp = sidecar["input"]
    layout = inp.get("layout") or "NCHW"
    src = rgb if crop is None else rgb[crop[1] : crop[3], crop[0] : crop[2]]
    x = preprocess_array(src, spec, layout).astype(np.float32)
    q = inp.get("quantization")
    quantized = (
        quantize(x, q["scale"], q["zero_point"], inp["dtype"]).astype(np.int32).reshape(-1).tolist() if q else None
    )
    return {
        "image": image_name,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "argb": argb_ints(rgb),
        "crop": list(crop) if crop else None,
        "sidecar": sidecar["artifact"] + ".json",
        "expected_float_bits": x.reshape(-1).view(np.int32).tolist(),
        "expected_quantized": quantized,
    }


def _normalised(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _templates(views: dict) -> np.ndarray:
    """Each person's template as the Kotlin gallery makes it: the normalised mean of the normalised views."""
    return np.stack([_normalised(np.mean([_normalised(v) for v in vs], axis=0)) for vs in views.values()])


def reference_gallery(views: dict[str, list[np.ndarray]], probe: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = list(views)
    templates = _templates(views)
    return names, templates @ _normalised(probe)


def gallery_cases(dim: int = 24, people: int = 5, probes: int = 24, threshold: float = 0.6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    views = {
        f"person_{i}": [(centres[i] + 0.5 * rng.normal(size=dim)).astype(np.float32) for _ in range(1 + i % 3)]
        for i in range(people)
    }
    cases = []
    while len(cases) < probes:
        who = int(rng.integers(people + 2))  # some probes are strangers
        base = centres[who] if who < people else rng.normal(size=dim)
        probe = (base + rng.uniform(0.3, 1.6) * rng.normal(size=dim)).astype(np.float32)
        names, sims = reference_gallery(views, probe)
        order = np.argsort(-sims, kind="stable")
        best = float(sims[order[0]])
        if abs(best - threshold) < 1e-4 or (len(order) > 1 and best - float(sims[order[1]]) < 1e-4):
            continue
        cases.append(
            {
                "probe": probe.tolist(),
                "best": names[order[0]],
                "similarity": best,
                "identity": names[order[0]] if best >= threshold else None,
            }
        )
    forget = "person_1"
    after = []
    rest = {k: v for k, v in views.items() if k != forget}
    for c in cases[:8]:
        names, sims = reference_gallery(rest, np.asarray(c["probe"], dtype=np.float32))
        order = np.argsort(-sims, kind="stable")
        after.append({"best": names[order[0]], "similarity": float(sims[order[0]])})
    vectors = [np.asarray(c["probe"], np.float32) for c in cases]
    return {
        "dim": dim,
        "threshold": threshold,
        "views": {k: [v.tolist() for v in vs] for k, vs in views.items()},
        "probes": cases,
        "forget": forget,
        "after_forget": after,
        "int8": int8_cases(views, vectors, threshold),
        "pca": pca_cases(views, vectors, rng),
        "binary": binary_cases(views, vectors),
        "float16": float16_cases(views, vectors, threshold),
    }


def int8_cases(views: dict, probes: list[np.ndarray], threshold: float, margin: float = 0.02) -> dict:
    """The same gallery stored as int8 by the host's own code (`mobilereid.gallery`: one global scale fitted on the
    templates, probe quantized alike, int32 dot): the scale, each template's codes, and per probe the best identity
    and its score (dot x scale^2). Probes whose best score lies within ``margin`` of the threshold or of the runner-up
    are left out, so a one-LSB rounding difference cannot flip a decision."""
    from mobilereid.gallery import encode, int8_values, similarity

    names = list(views)
    templates = _templates(views)
    stored = encode(templates, "int8")
    scale = stored["scale"]

    def score(probe):
        return similarity(probe[None], stored, "int8", templates.shape[1])[0].astype(np.float64) * scale * scale

    out = clear_decisions(names, probes, score, threshold, margin)
    codes = int8_values(stored["codes"])
    return {"scale": scale, "codes": {n: codes[i].tolist() for i, n in enumerate(names)}, "probes": out}


def clear_decisions(names: list[str], probes: list[np.ndarray], score, threshold: float, margin: float) -> list:
    """Per probe: the best identity under ``score`` (probe -> a similarity per name), its similarity and the decision
    at ``threshold``; probes whose best lies within ``margin`` of the threshold or of the runner-up are left out."""
    out = []
    for probe in probes:
        sims = score(probe)
        order = np.argsort(-sims, kind="stable")
        best = float(sims[order[0]])
        if abs(best - threshold) < margin or (len(order) > 1 and best - float(sims[order[1]]) < margin):
            continue
        out.append(
            {
                "probe": probe.tolist(),
                "best": names[order[0]],
                "similarity": best,
                "identity": names[order[0]] if best >= threshold else None,
            }
        )
    return out


def pca_cases(views: dict, probes: list[np.ndarray], rng, k: int = 8, threshold: float = 0.5, margin=0.01) -> dict:
    """The gallery stored as pcaK by the host's own code (`mobilereid.gallery`: projection fitted on embeddings like
    the gallery's, each template projected and re-normalised): the projection, each template's stored projection,
    and per probe the best identity and its projected cosine; probes within ``margin`` of the threshold or of the
    runner-up are left out."""
    from mobilereid.gallery import encode, fit_pca, similarity

    names = list(views)
    templates = _templates(views)
    enrolled = np.concatenate([np.stack(v) for v in views.values()])
    fit = np.concatenate([enrolled, rng.normal(size=(40, templates.shape[1]))])
    pca = fit_pca(fit, k)
    stored = encode(templates.astype(np.float32), f"pca{k}", pca)

    def score(probe):
        return similarity(probe[None], stored, f"pca{k}", templates.shape[1])[0].astype(np.float64)

    out = clear_decisions(names, probes, score, threshold, margin)
    return {
        "threshold": threshold,
        "mean": pca["mean"].tolist(),
        "components": pca["components"].tolist(),
        "projections": {n: stored["codes"][i].tolist() for i, n in enumerate(names)},
        "probes": out,
    }


def binary_cases(views: dict, probes: list[np.ndarray], threshold: float = 0.3) -> dict:
    """The gallery stored as sign bits by the host's own code (`mobilereid.gallery`), scored as (D - 2 x Hamming) /
    D: per probe the best identity and its score. Scores are exact multiples of 2 / D on both sides; probes with a tie
    for the best are left out (both sides give ties to the person enrolled first, but the margin rule is shared)."""
    from mobilereid.gallery import encode, similarity

    names = list(views)
    templates = _templates(views)
    dim = templates.shape[1]
    stored = encode(templates.astype(np.float32), "binary")

    def score(probe):
        return 2.0 * similarity(probe[None], stored, "binary", dim)[0].astype(np.float64) / dim - 1.0

    return {"threshold": threshold, "probes": clear_decisions(names, probes, score, threshold, 1e-9)}


def float16_cases(views: dict, probes: list[np.ndarray], threshold: float, margin: float = 0.01) -> dict:
    """The gallery stored as float16 by the host's own code (`mobilereid.gallery`): each template's halves as IEEE
    binary16 bit patterns, per probe the best identity and its score (the float32 probe against the halves), and
    float32 -> binary16 conversions that exercise round-half-to-even, subnormals, overflow and signed zero."""
    from mobilereid.gallery import encode, similarity

    names = list(views)
    templates = _templates(views)
    stored = encode(templates.astype(np.float32), "float16")

    def score(probe):
        return similarity(probe[None], stored, "float16", templates.shape[1])[0].astype(np.float64)

    edge = np.array(
        [0.0, -0.0, 1.0, -1.0, 1 / 3, 0.1, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 1e6, 2**-14,
         2**-15 * 1.5, 2**-24, 2**-25, 2**-25 * 1.5, 3 * 2**-26, 1e-9, -6.1e-5, 0.7071068],
        dtype=np.float32,
    )  # fmt: skip
    return {
        "threshold": threshold,
        "halves": {n: stored["codes"][i].view(np.uint16).tolist() for i, n in enumerate(names)},
        "conversions": [[float(f), int(h)] for f, h in zip(edge, edge.astype(np.float16).view(np.uint16))],
        "probes": clear_decisions(names, probes, score, threshold, margin),
    }


def latency_cases(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = []
    for n in (1, 2, 7, 100, 513):
        s = rng.gamma(2.0, 3.0, size=n)
        out.append(
            {
                "samples": s.tolist(),
                **{f"p{p}": float(np.percentile(s, p)) for p in (50, 90, 99)},
                "mean": float(s.mean()),
            }
        )
    return {"cases": out}


def npz_case(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "query": rng.normal(size=(3, 8)).astype(np.float32).tolist(),
        "gallery": rng.normal(size=(5, 8)).astype(np.float32).tolist(),
        "latency_ms": rng.gamma(2.0, 3.0, size=8).tolist(),
        "q_pids": [1, 2, 3],
        "g_pids": [1, 2, 3, 0, -1],
        "q_camids": [0, 1, 2],
        "g_camids": [1, 0, 1, 2, 0],
    }


def write_golden(out_dir: Path, data: Path, sidecars: list[Path], images_per_sidecar: int = 3) -> Path:
    """Write every golden file into ``out_dir`` (created); returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data, need_train=False)
    picks = (ds.query + ds.gallery)[:: max(1, (len(ds.query) + len(ds.gallery)) // 7)][:images_per_sidecar]
    cases = []
    for sc in sidecars:
        meta = json.loads(Path(sc).read_text())
        shutil.copyfile(sc, out_dir / (meta["artifact"] + ".json"))
        for i, s in enumerate(picks):
            rgb = load_rgb(s.path)
            h, w = rgb.shape[:2]
            # whole image, a near-full crop, and a small crop (upsampled to the model size)
            crop = [None, (1, 2, w - 1, h - 3), (5, 7, 5 + w // 5, 7 + h // 5)][i % 3]
            cases.append(preprocess_case(rgb, s.path.name, meta, crop))
    (out_dir / "preprocess.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "cases": cases}))
    (out_dir / "gallery.json").write_text(json.dumps(gallery_cases()))
    (out_dir / "latency.json").write_text(json.dumps(latency_cases()))
    (out_dir / "npz.json").write_text(json.dumps(npz_case()))
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder whose query/gallery images are used")
    ap.add_argument(
        "--sidecar", type=Path, action="append", required=True, help="an artifact's .json sidecar (repeatable)"
    )
    args = ap.parse_args(argv)
    write_golden(args.out, args.data, args.sidecar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
