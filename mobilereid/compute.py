"""Where and in which precision the learning stages compute: device, mixed precision, input workers, ranks.

`train`, `compress`, `quant-finetune` and the torch reference of `evaluate` take ``--device auto|cpu|cuda|cuda:N``,
``--precision fp32|bf16|fp16`` and ``--workers N``; `resolve` turns them into one `Compute` before any work, so
a bad value is one line (exit 2) and not a CUDA error half-way through an epoch.

Choices, and why. Mixed precision is torch's autocast (the recipe of TransReID, torchreid and fast-reid, which
use apex/`torch.cuda.amp`): bf16 needs no loss scaling and runs on CPUs too (torch's CPU autocast); fp16 gets a
gradient scaler and is refused on the CPU, where torch's autocast has no fp16 kernels worth the name. On CUDA
devices fp32 matmuls use TF32 during training (`torch.set_float32_matmul_precision("high")`), as torch
recommends on Ampere and later; embeddings used as a *reference* (float metrics, drift against the user's model)
are computed with TF32 off (`exact_matmuls`), so a drift number never includes TF32's 10-bit mantissa.
Under `torchrun` each rank takes the GPU of its ``LOCAL_RANK`` (``--device cuda`` or ``auto``); ``cuda:N``
under torchrun is refused, since every rank would pick the same card. Workers default to 0 on the CPU (the
cores are the compute; images are decoded once and cached, so what is left per batch is augmentation), and to
min(8, cores per local rank - 1) on CUDA, where the host must keep a GPU fed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import MobileReIDError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str = "fp32"
    workers: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Mixed precision for a forward pass and its loss (a no-op context in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active only for fp16 (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def put(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=self.cuda)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return f"{self.device} ({name}), {self.precision}, {self.workers} input worker(s)"

    def record(self) -> dict:
        """What checkpoints and reports note about where a stage ran."""
        out = {"device": str(self.device), "precision": self.precision, "workers": self.workers}
        if self.cuda:
            out["device_name"] = torch.cuda.get_device_name(self.device)
        return out


CPU = Compute(torch.device("cpu"))


def local_rank() -> tuple[int, int]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) as torchrun sets them; (0, 1) outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def resolve_device(spec: str, flag: str = "--device") -> torch.device:
    text = (spec or "auto").strip().lower()
    under_torchrun = "LOCAL_RANK" in os.environ
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MobileReIDError(
                f"{flag} {spec}: this torch sees no CUDA device "
                f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)"
            )
        count = torch.cuda.device_count()
        if text == "cuda":
            index = local_rank()[0] if under_torchrun else 0
            if index >= count:
                raise MobileReIDError(
                    f"{flag} {spec}: LOCAL_RANK {index} but this machine has {count} CUDA device(s); "
                    f"use --nproc_per_node {count} or fewer"
                )
            return torch.device("cuda", index)
        tail = text.split(":", 1)[1]
        if not tail.isdigit():
            raise MobileReIDError(f"{flag} {spec}: expected cuda:N with N a device number")
        index = int(tail)
        if index >= count:
            raise MobileReIDError(f"{flag} {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        if under_torchrun and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise MobileReIDError(
                f"{flag} {spec}: under torchrun every rank would use the same GPU; "
                "use --device cuda (each rank takes the GPU of its LOCAL_RANK)"
            )
        return torch.device("cuda", index)
    raise MobileReIDError(f"{flag} {spec}: unknown device; use auto, cpu, cuda or cuda:N")


def default_workers(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // local_rank()[1] - 1))


def resolve(
    device: str = "auto", precision: str = "fp32", workers: int | None = None, device_flag: str = "--device"
) -> Compute:
    """Check and resolve the three options, in the order a user reads the error: device, precision, workers
    (``device_flag``: the option's name in messages, e.g. evaluate's ``--torch-device``)."""
    dev = resolve_device(device, device_flag)
    prec = (precision or "fp32").strip().lower()
    if prec not in PRECISIONS:
        raise MobileReIDError(f"--precision {precision}: unknown; use one of {', '.join(PRECISIONS)}")
    if prec == "fp16" and dev.type == "cpu":
        raise MobileReIDError(
            "--precision fp16: not on the CPU (torch's CPU autocast has no fast fp16); use bf16 or fp32"
        )
    if prec == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MobileReIDError(
            f"--precision bf16: {torch.cuda.get_device_name(dev)} has no bf16 support; use fp16 or fp32"
        )
    if workers is not None and workers < 0:
        raise MobileReIDError(f"--workers {workers}: must be >= 0 (0 = load batches in the training process)")
    return Compute(dev, prec, default_workers(dev) if workers is None else workers)


def activate(compute: Compute) -> None:
    """Process-wide settings for a training stage on ``compute``: its GPU current, TF32 matmuls on CUDA."""
    if compute.cuda:
        torch.cuda.set_device(compute.device)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def exact_matmuls():
    """fp32 matmuls without TF32 (reference embeddings); restores the previous setting."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def peak_memory_bytes(compute: Compute) -> int | None:
    """Peak allocated memory on the device since the last reset (CUDA), or this process's peak RSS (CPU)."""
    if compute.cuda:
        return int(torch.cuda.max_memory_allocated(compute.device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None
