"""What every export target shares: the job description, atomic writes, the metadata sidecar, verification.

The sidecar (``<artifact>.json``) is the single contract with every consumer (mobilereid/device/, the Android demo,
users): input size, layout, colour order, scale/mean/std, dtype and quantization of input and output, embedding size,
source checkpoint hash, recipe, sha256 of the artifact and the verification result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..console import err_console
from ..data.preprocess import PreprocessSpec
from ..errors import ExportError
from ..filesafety import atomic_write_bytes  # noqa: F401 (the targets import it from here)
from ..models.checkpoint import file_sha256
from ..runtimes import open_runner, sidecar_path


@dataclass
class ExportJob:
    model: torch.nn.Module
    family: str
    preset: str | None
    checkpoint: Path | None
    checkpoint_sha256: str | None
    spec: PreprocessSpec
    calib: np.ndarray  # (N, 3, H, W) float32, preprocessed
    verify: np.ndarray  # held-out images
    out_dir: Path
    threads: int = 2
    reference: np.ndarray = field(default=None)  # float torch embeddings of `verify`
    scratch: Path | None = None  # temporary folder living as long as the whole export (shared intermediates)
    saved_model: Path | None = None  # onnx2tf SavedModel, made once per export
    reference_pairwise_cosine: float | None = None  # mean cosine between the float embeddings of different images
    verify_notes: list = field(default_factory=list)  # e.g. fewer held-out images than the recipe asks for
    graph_rewrites: dict = field(default_factory=dict)  # variant -> function-preserving rewrites of its LiteRT graph

    def __post_init__(self):
        self.model.eval()
        with torch.no_grad():
            self.reference = self.model(torch.from_numpy(self.verify)).numpy()
        self.reference_pairwise_cosine = self._check_not_collapsed()

    def _check_not_collapsed(self) -> float | None:
        """Cosine to the float model only means something if the float model tells images apart. A collapsed model
        (every image the same embedding, e.g. after a diverged fine-tuning) would pass any cosine threshold, so it
        is refused; the mean pairwise cosine goes into each verification result as the scale to read cosines on
        (an untrained SCL-net already sits near 0.97, a trained one near 0.04)."""
        n = len(self.reference)
        if n < 2:
            return None
        unit = unit_rows(self.reference)
        pairs = (unit @ unit.T)[~np.eye(n, dtype=bool)]
        if pairs.min() > 0.9999:
            raise ExportError(
                f"{self.checkpoint or self.stem}: the float model gives all {n} held-out images the same "
                "embedding (pairwise cosine > 0.9999), a collapsed model; verifying against it would be "
                "meaningless"
            )
        return float(pairs.mean())

    @property
    def stem(self) -> str:
        return self.checkpoint.stem if self.checkpoint else (self.preset or self.family)

    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.calib[:1].copy())


def unshare_weights(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give every user of a shared weight its own copy. A module called twice (OSNet's aggregation gate is shared
    by its four streams) leaves one weight feeding several quantized ops, and XNNPACK then fails to compile the
    INT8 program at load time (measured on ExecuTorch: "XNNCompiler::compileModel failed" for a shared gate, fine
    unshared; LiteRT's XNNPACK delegate fails to prepare the ai-edge-quantizer int8 model the same way)."""
    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
        for i, user in enumerate(list(node.users)[1:]):
            name = f"{node.target.replace('.', '_')}_unshared{i}"
            gm.register_buffer(name, value.detach().clone()) if not isinstance(
                value, torch.nn.Parameter
            ) else gm.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
            with gm.graph.inserting_before(user):
                user.replace_input_with(node, gm.graph.get_attr(name))
    gm.graph.lint()
    gm.recompile()
    return gm


def unshared_graph(job: ExportJob, model: torch.nn.Module | None = None) -> GraphModel:
    """The job's model (or ``model``) captured by torch.export, each shared weight copied per op (see
    unshare_weights)."""
    return GraphModel(
        unshare_weights(torch.export.export(job.model if model is None else model, (job.example(),)).module())
    )


class GraphModel(torch.nn.Module):
    """An exported graph module as a plain module (exported modules refuse .eval()/.train())."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.gm(x)


def atomic_copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, Path(src).read_bytes())


def tensor_spec(name: str, shape, layout: str | None, dtype: str, quant: tuple[float, int] | None) -> dict:
    d = {"name": name, "shape": [int(s) for s in shape], "dtype": dtype}
    if layout:
        d["layout"] = layout
    d["quantization"] = {"scale": float(quant[0]), "zero_point": int(quant[1])} if quant else None
    return d


def describe_artifact(
    job: ExportJob,
    *,
    target: str,
    runtime: str,
    precision: str,
    input_spec: dict,
    output_spec: dict,
    recipe: dict,
    extra: dict | None = None,
) -> dict:
    """What a runtime needs to know about an artifact (model, preprocessing, IO tensors, matching, recipe)."""
    meta = {
        "format": "mobilereid-artifact",
        "format_version": 1,
        "created_by": f"mobilereid {__version__}",
        "target": target,
        "runtime": runtime,
        "precision": precision,
        "model": {
            "family": job.family,
            "preset": job.preset,
            "config": job.model.cfg.to_dict(),
            "source_checkpoint": str(job.checkpoint) if job.checkpoint else None,
            "source_sha256": job.checkpoint_sha256,
            "embedding_dim": int(job.reference.shape[1]),
        },
        "preprocess": job.spec.to_dict(),
        "input": input_spec,
        "output": output_spec,
        "matching": {"distance": "cosine", "normalize": "l2 before matching"},
        "recipe": {k: v for k, v in recipe.items() if k != "variants"},
    }
    cfg = job.model.cfg
    if getattr(cfg, "camera_num", 0) > 0:
        meta["camera"] = {
            "embedding": "sie",
            "cameras": int(cfg.camera_num),
            "baked_camera": cfg.sie_camera,
            "note": "one camera's SIE embedding is a constant of this artifact; images of other cameras "
            "are embedded as if seen by it",
        }
    meta.update(extra or {})
    return meta


def write_sidecar(job: ExportJob, artifact: Path, *, description: dict | None = None, **describe) -> dict:
    """Write ``<artifact>.json``: the description plus the file's name, hash, size and creation time."""
    meta = dict(description) if description is not None else describe_artifact(job, **describe)
    meta.update(
        {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "artifact": artifact.name,
            "sha256": file_sha256(artifact),
            "size_bytes": artifact.stat().st_size,
        }
    )
    _write_json(sidecar_path(artifact), meta)
    return meta


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (unit_rows(a) * unit_rows(b)).sum(1)


def verify_artifact(job: ExportJob, artifact: Path, meta: dict, min_cosine: float) -> dict:
    """Run the artifact in its real runtime on held-out images; record cosine to the float model in the sidecar."""
    err_console.print(
        f"verifying {artifact.name} in {meta['runtime']} on {len(job.verify)} held-out images", markup=False
    )
    try:
        runner = open_runner(artifact, meta, threads=job.threads)
        t0 = time.perf_counter()
        emb = runner.embed(job.verify)
        seconds = time.perf_counter() - t0
    except ExportError:
        raise
    except Exception as exc:  # the runtime refused the artifact (e.g. a delegate failed to compile it)
        artifact.unlink(missing_ok=True)
        sidecar_path(artifact).unlink(missing_ok=True)
        raise ExportError(
            f"{artifact}: {meta['runtime']} cannot run the exported artifact ({' '.join(str(exc).split())[:200]}); "
            "it was removed"
        ) from None
    if emb.shape != job.reference.shape:
        raise ExportError(
            f"{artifact}: runtime output shape {emb.shape} differs from the float model's {job.reference.shape}"
        )
    cos = cosine_rows(emb, job.reference)
    result = {
        "runtime": meta["runtime"],
        "threads": job.threads,
        "images": int(len(cos)),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "threshold": float(min_cosine),
        "passed": bool(cos.mean() >= min_cosine),
        "reference_pairwise_cosine_mean": job.reference_pairwise_cosine,
        "seconds_per_image": seconds / len(cos),
        **({"notes": list(job.verify_notes)} if job.verify_notes else {}),
    }
    meta["verification"] = result
    _write_json(sidecar_path(artifact), meta)
    return result
