"""An emulated arm64 board: a Debian arm64 root run under qemu-user, with the real aarch64 LiteRT wheel.

Why: every figure of this kit comes from an x86 host, whose XNNPACK kernels (int8 requantization, dot-product
paths, KleidiAI's per-row activation quantization) are not the ones a phone or an ARM board runs. Under qemu-user
the real aarch64 wheels run their real ARM kernels (NEON, dotprod ``sdot``, i8mm ``smmla``, chosen from the
emulated CPU's HWCAPs), so ARM-vs-x86 agreement of an artifact can be measured here. Timings under emulation say
nothing about a phone and are never reported as latency.

Choices (measured by the arm64 probe of this round, shared/arm64/PROBE.md, and rebuilt here):

* **qemu 10** (static build of Debian's ``qemu-user`` from bookworm-backports), not bookworm's qemu 7.2: 7.2 emulates
  SME wrongly (its default CPU ``max`` has SME, and XNNPACK's KleidiAI SME int8 kernels then give cosine 0.75 to
  x86); qemu 10 is exact on every CPU model the probe tried. The binary is fetched with a private apt state (the
  host's apt sources are untouched) and kept in the cache folder.
* **Setup** needs root (binfmt_misc, chroot) and Debian's apt: ``debootstrap --foreign`` for arm64, then the second
  stage under qemu through a binfmt entry of our own (``mobilereid-aarch64``, flags ``FP``: the interpreter is
  opened at registration, so it works inside the chroot). Wheels are downloaded and installed by the *host's* pip
  with aarch64 platform tags (native speed, no emulated pip).
* **Runs** do not depend on binfmt: ``chroot ROOT /usr/local/bin/qemu-aarch64 -cpu MODEL /usr/bin/python3.11 ...``
  (the evaluator spawns no child processes). /proc is mounted for the run and unmounted after it; the device nodes
  the evaluator needs are created in the root, so /dev is never bind-mounted (a bind-mounted /dev inside a cache
  folder is a hazard for anyone who deletes that folder). qemu 10 emulates ``/proc/cpuinfo`` itself; a fake
  ``/sys/devices/system/cpu`` with the model's MIDR is written for cpuinfo-reading code.
* **Disk and time**: 466 MB in all (root, wheels, qemu binary), 4.7 min from nothing on a 2-core host (measured;
  the debootstrap second stage under emulation is most of it). The ExecuTorch runtime is not installed: on aarch64
  it needs torch, whose PyPI wheel pulls 2.7 GB of CUDA wheels (the probe replaced them with generated stub
  libraries; not carried over).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import MobileReIDError
from .programs import run_program

SUITE = "bookworm"
PYTHON = "/usr/bin/python3.11"
QEMU_IN_ROOT = "/usr/local/bin/qemu-aarch64"
SITE = "usr/local/lib/python3.11/dist-packages"
# what the torch-free evaluator needs, pinned as on the host (requirements.lock)
WHEELS = [
    "ai-edge-litert==2.3.0",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "flatbuffers==25.12.19",
    "protobuf==7.36.2",
    "ml_dtypes==0.6.0",
    "tqdm==4.70.1",
    "backports.strenum==1.2.8",
    "typing-extensions",
]
BINFMT_NAME = "mobilereid-aarch64"
# ELF header of an aarch64 executable and its mask (binfmt_misc's escaped-hex notation)
_ELF_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_ELF_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
# CPU models offered (qemu -cpu names) and their MIDR_EL1 values (for the fake sysfs)
CPU_MIDR = {
    "cortex-a53": 0x410FD034,
    "cortex-a55": 0x412FD050,
    "cortex-a72": 0x410FD083,
    "cortex-a76": 0x414FD0B1,
    "neoverse-n1": 0x414FD0C1,
    "neoverse-n2": 0x410FD490,
    "cortex-a710": 0x412FD470,
    "max": 0x000F0510,
}
DEFAULT_CPU = "cortex-a76"
_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}


class BoardError(MobileReIDError):
    """The emulated board cannot be set up or run here."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobilereid" / "arm64"


def check_cpu(cpu: str) -> str:
    model = cpu.split(",")[0]
    if model.startswith("-") or model not in CPU_MIDR:
        raise BoardError(f"CPU model {cpu!r}: choose one of {', '.join(CPU_MIDR)}")
    return cpu


def _run(cmd: list[str], what: str, timeout: int = 3600, env: dict | None = None, marker: str | None = None) -> str:
    return run_program(cmd, what, BoardError, timeout, env, max_chars=300, marker=marker)


class Arm64Board:
    """The cached arm64 root and its qemu; `setup` builds it (idempotent), `run` executes the guest Python."""

    def __init__(self, cache: Path | None = None):
        self.cache = Path(cache) if cache else cache_dir()
        self.root = self.cache / "root"
        self.qemu = self.cache / "qemu" / "qemu-aarch64"
        self.wheels = self.cache / "wheels"
        self.stamp = self.cache / "setup.json"
        self.owner_mark = self.cache / ".made-by-mobilereid"  # only a cache folder holding it is ever deleted from

    # ---- state -------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        return (
            self.stamp.is_file()
            and (self.root / PYTHON.lstrip("/")).exists()
            and (self.root / QEMU_IN_ROOT.lstrip("/")).is_file()
        )

    def info(self) -> dict:
        return json.loads(self.stamp.read_text()) if self.stamp.is_file() else {}

    def require_ready(self) -> None:
        if not self.ready():
            raise BoardError(
                f"no emulated arm64 board in {self.cache}: run `mobilereid board setup arm64` first (as root)"
            )
        if os.geteuid() != 0:
            raise BoardError("running the emulated arm64 board needs root (chroot); run the command as root")

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, cpu: str = DEFAULT_CPU, log=print) -> dict:
        check_cpu(cpu)
        if sys.platform != "linux" or os.uname().machine != "x86_64":
            raise BoardError(
                f"the emulated arm64 board is built on x86-64 Linux hosts (this is {sys.platform} {os.uname().machine})"
            )
        if os.geteuid() != 0:
            raise BoardError(
                "board setup needs root (apt, binfmt_misc, debootstrap, chroot): "
                "run `sudo mobilereid board setup arm64`"
            )
        for tool in ("apt-get", "dpkg"):
            if shutil.which(tool) is None:
                raise BoardError(f"board setup needs Debian's {tool} (a Debian or Ubuntu host)")
        t0 = time.perf_counter()
        step = lambda what: log(f"[{time.perf_counter() - t0:.0f} s] {what}")  # noqa: E731
        self._claim_cache()
        step("1/6 host packages (debootstrap)")
        if shutil.which("debootstrap") is None:
            _run(["apt-get", "update", "-qq"], "apt-get update")
            _run(
                ["apt-get", "install", "-y", "-qq", "debootstrap"],
                "apt-get install debootstrap",
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        step("2/6 qemu 10 (static qemu-user from bookworm-backports)")
        if not self.qemu.is_file():
            self._fetch_qemu()
        qemu_version = _run([str(self.qemu), "--version"], "qemu").splitlines()[0]
        step(f"3/6 binfmt_misc entry {BINFMT_NAME} ({qemu_version})")
        self._register_binfmt()
        step(
            f"4/6 arm64 Debian {SUITE} root (debootstrap; the second stage runs under emulation, ~6-8 min) "
            f"-> {self.root}"
        )
        if (
            not (self.root / PYTHON.lstrip("/")).exists()
            or not (self.root / "var/lib/dpkg/status").is_file()
            or (self.root / "debootstrap").exists()
        ):
            self._debootstrap()
        self._install_qemu_and_devices()
        step("5/6 aarch64 wheels (host pip, aarch64 platform tags) -> root")
        self._install_wheels()
        step(f"6/6 smoke test on an emulated {cpu}")
        smoke = (
            self.run(
                cpu,
                [
                    "-c",
                    "import platform, numpy, PIL; from ai_edge_litert.interpreter import Interpreter; "
                    "print(platform.machine(), numpy.__version__)",
                ],
                timeout=900,
            )
            .strip()
            .splitlines()[-1]
        )
        if not smoke.startswith("aarch64"):
            raise BoardError(f"smoke test: the guest Python reported {smoke!r}, not aarch64")
        info = {
            "suite": SUITE,
            "qemu": qemu_version,
            "wheels": WHEELS,
            "root": str(self.root),
            "smoke": smoke,
            "disk_mb": _disk_mb(self.cache),
            "seconds": round(time.perf_counter() - t0, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.stamp.write_text(json.dumps(info, indent=2))
        step(f"done: {info['disk_mb']} MB in {self.cache}")
        return info

    def _mirrors(self) -> list[str]:
        """The host's Debian mirrors (apt sources, one-line or deb822 format), then deb.debian.org."""
        found = []
        for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
            try:
                text = f.read_text()
            except OSError:
                continue
            for word in text.split():
                if word.startswith(("http://", "https://")) and "security" not in word and "debian" in word:
                    found.append(word.rstrip("/"))
        return list(dict.fromkeys(found + ["http://deb.debian.org/debian"]))

    def _fetch_qemu(self) -> None:
        """Download Debian's qemu-user (10.x, static) from bookworm-backports with a private apt state, from the first
        mirror that has it, and keep its qemu-aarch64. Remembers that mirror for debootstrap."""
        for mirror in self._mirrors():
            with tempfile.TemporaryDirectory() as tmp:
                t = Path(tmp)
                for d in ("lists/partial", "cache/archives/partial"):
                    (t / d).mkdir(parents=True)
                (t / "sources.list").write_text(f"deb {mirror} {SUITE}-backports main\n")
                opts = [
                    "-o",
                    f"Dir::Etc::sourcelist={t / 'sources.list'}",
                    "-o",
                    "Dir::Etc::sourceparts=-",
                    "-o",
                    f"Dir::State::Lists={t / 'lists'}",
                    "-o",
                    f"Dir::Cache={t / 'cache'}",
                ]
                subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True, timeout=600)
                subprocess.run(
                    ["apt-get", *opts, "download", "-qq", f"qemu-user/{SUITE}-backports"],
                    cwd=t,
                    capture_output=True,
                    timeout=1200,
                )
                debs = sorted(t.glob("qemu-user_*.deb"))
                if not debs:
                    continue
                _run(["dpkg", "-x", str(debs[0]), str(t / "x")], "dpkg -x qemu-user")
                self.qemu.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(t / "x/usr/bin/qemu-aarch64", self.qemu.with_suffix(".part"))
                os.replace(self.qemu.with_suffix(".part"), self.qemu)
                self.qemu.chmod(0o755)
                (self.cache / "mirror").write_text(mirror + "\n")
                return
        raise BoardError(
            f"could not download qemu-user from {SUITE}-backports from any of {', '.join(self._mirrors())}"
        )

    def _mirror(self) -> str:
        remembered = self.cache / "mirror"
        return remembered.read_text().strip() if remembered.is_file() else self._mirrors()[0]

    def _register_binfmt(self) -> None:
        base = Path("/proc/sys/fs/binfmt_misc")
        if not (base / "register").exists():
            try:
                _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(base)], "mount binfmt_misc")
            except BoardError as exc:
                raise BoardError(
                    f"{exc}; this host does not let us register an ARM interpreter (binfmt_misc)"
                ) from None
        entry = base / BINFMT_NAME
        if entry.exists():
            if f"interpreter {self.qemu}" in entry.read_text():
                return
            entry.write_text("-1")  # ours, pointing at another cache: replace it
        line = f":{BINFMT_NAME}:M::{_ELF_MAGIC}:{_ELF_MASK}:{self.qemu}:FP"
        try:
            (base / "register").write_text(line)
        except OSError as exc:
            raise BoardError(f"cannot register the aarch64 interpreter with binfmt_misc ({exc.strerror})") from None

    def _claim_cache(self) -> None:
        """Create the cache folder and mark it ours; a non-empty folder there that we did not make is refused."""
        if self.cache.is_dir() and any(self.cache.iterdir()) and not self.owner_mark.is_file():
            raise BoardError(
                f"{self.cache}: exists and was not made by `mobilereid board setup`; refusing to build "
                "into it (move it away or set XDG_CACHE_HOME)"
            )
        self.cache.mkdir(parents=True, exist_ok=True)
        self.owner_mark.write_text("made by mobilereid board setup; delete the whole folder to remove the board\n")

    def _remove_ours(self, path: Path) -> None:
        """Delete a folder of the board (a half-built root, the fake sysfs): only inside a cache we made, and never
        across a mount point (a /proc left mounted by a killed run)."""
        if not self.owner_mark.is_file() or self.cache.resolve() not in path.resolve().parents:
            raise BoardError(f"{path}: not inside a board cache made by mobilereid; refusing to delete it")
        for top, dirs, _ in os.walk(path):  # top-down: a mount point is found before anything below it is listed
            for d in [top] + [os.path.join(top, name) for name in dirs]:
                if os.path.ismount(d):
                    raise BoardError(f"{d}: is a mount point; unmount it (umount {d}) before the board can be rebuilt")
        shutil.rmtree(path)

    def _debootstrap(self) -> None:
        if self.root.exists():
            self._remove_ours(self.root)  # a half-built root of ours (no stamp): start again
        _run(
            [
                "debootstrap",
                "--arch=arm64",
                "--variant=minbase",
                "--foreign",
                "--include=python3,ca-certificates",
                SUITE,
                str(self.root),
                self._mirror(),
            ],
            "debootstrap (first stage)",
            timeout=1800,
        )
        _run(
            ["chroot", str(self.root), "/debootstrap/debootstrap", "--second-stage"],
            "debootstrap (second stage, emulated)",
            timeout=3600,
        )

    def _install_qemu_and_devices(self) -> None:
        target = self.root / QEMU_IN_ROOT.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.qemu, target)
        target.chmod(0o755)
        dev = self.root / "dev"
        dev.mkdir(exist_ok=True)
        for name, (major, minor) in _DEV_NODES.items():
            node = dev / name
            if not node.exists():
                os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))  # character device

    def _install_wheels(self) -> None:
        site = self.root / SITE
        if (site / "ai_edge_litert").is_dir() and (site / "numpy").is_dir() and (site / "PIL").is_dir():
            return
        plat = ["--platform", "manylinux2014_aarch64"] + [
            x for i in range(17, 37) for x in ("--platform", f"manylinux_2_{i}_aarch64")
        ]
        args = plat + ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
        pip = [sys.executable, "-m", "pip"]
        self.wheels.mkdir(parents=True, exist_ok=True)
        _run(
            pip + ["download", "-q", "--no-deps", *args, "-d", str(self.wheels), *WHEELS],
            "pip download (aarch64 wheels)",
            timeout=1800,
        )
        _run(
            pip
            + [
                "install",
                "-q",
                "--no-index",
                "--find-links",
                str(self.wheels),
                *args,
                "--no-deps",
                "--upgrade",
                "--target",
                str(site),
                *WHEELS,
            ],
            "pip install --target (aarch64 wheels)",
            timeout=1800,
        )

    # ---- running -----------------------------------------------------------------------------------------
    def run(self, cpu: str, args: list[str], timeout: int = 7200, marker: str | None = None) -> str:
        """``python3.11 ARGS`` in the root on the emulated CPU model; its stdout. Files the guest reads are staged in
        the root's /tmp by the caller (`stage_dir`). ``marker``: as for `run_program` (a crash names the step)."""
        check_cpu(cpu)
        with open(self.cache / "run.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time: runs share the root's /proc mount and fake /sys
            return self._run_locked(cpu, args, timeout, marker)

    def _run_locked(self, cpu: str, args: list[str], timeout: int, marker: str | None = None) -> str:
        self._fake_sysfs(cpu)
        proc = self.root / "proc"
        proc.mkdir(exist_ok=True)
        mounted = False
        try:
            if not os.path.ismount(proc):
                _run(["mount", "-t", "proc", "proc", str(proc)], "mount /proc in the arm64 root")
                mounted = True
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/tmp",
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # found on the host's PATH, not the guest's
            cmd = [chroot, str(self.root), QEMU_IN_ROOT, "-cpu", cpu, PYTHON, *args]
            return _run(cmd, f"arm64 ({cpu})", timeout, env, marker)
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(proc)], capture_output=True)

    def _fake_sysfs(self, cpu: str) -> None:
        """/sys/devices/system/cpu with the model's MIDR (qemu-user shows the host's /sys otherwise)."""
        midr = CPU_MIDR[cpu.split(",")[0]]
        n = os.cpu_count() or 2
        base = self.root / "sys/devices/system/cpu"
        if base.exists():
            self._remove_ours(base)
        base.mkdir(parents=True)
        for f in ("possible", "present", "online"):
            (base / f).write_text(f"0-{n - 1}\n")
        for i in range(n):
            d = base / f"cpu{i}"
            (d / "regs/identification").mkdir(parents=True)
            (d / "regs/identification/midr_el1").write_text(f"0x{midr:016x}\n")
            (d / "online").write_text("1\n")

    def stage_dir(self) -> Path:
        """A fresh folder under the root's /tmp (host path) for one run's files; the caller removes it."""
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="mobilereid-eval.", dir=tmp))

    def guest_path(self, host_path: Path) -> str:
        return "/" + host_path.resolve().relative_to(self.root.resolve()).as_posix()


def _disk_mb(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total >> 20
