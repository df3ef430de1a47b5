"""What a measurement names about the machine it ran on: the CPU model and the instruction-set extensions that decide
which kernels a runtime can use (every latency and throughput record carries it: this project's CPUs change between
sessions)."""

from __future__ import annotations

import platform
from pathlib import Path


def host_cpu() -> str:
    """CPU model and the instruction-set extensions that decide whether int8 kernels beat fp32 (x86: AVX-512 VNNI /
    AVX-VNNI dot products; Arm: asimddp/i8mm). Without them XNNPACK's int8 convolutions can be slower than fp32."""
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model == platform.machine():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    wanted = [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_int8",
        "asimddp",
        "i8mm",
        "bf16",
    ]
    return f"{model}; {' '.join(f for f in wanted if f in flags) or 'none of ' + '/'.join(wanted)}"


def measurement_stamp(repo: Path | None = None) -> dict:
    """Date, commit (``git rev-parse --short HEAD`` of ``repo``, "unknown" outside a checkout), host name and CPU:
    what every dated results file carries."""
    import subprocess
    import time

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo or Path.cwd(), timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit or "unknown",
        "host": platform.node() or "host",
        "host_cpu": host_cpu(),
    }


def write_results_file(folder: Path, topic: str, stamp: dict, markdown: str) -> Path:
    """``folder/<date>-<commit>-<host>-<topic>.md``: a benchmark's table as a dated results file (docs/results/)."""
    from .filesafety import atomic_write_text  # not at the top: host.py also runs on devices, without filesafety.py

    path = folder / f"{stamp['date']}-{stamp['commit']}-{stamp['host']}-{topic}.md"
    header = f"<!-- {stamp['date']}, commit {stamp['commit']}, host {stamp['host']} ({stamp['host_cpu']}) -->\n"
    atomic_write_text(path, header + markdown)
    return path
