"""Run exported artifacts in their real runtimes, driven only by the metadata sidecar (numpy only here).

Used by export verification on the host and, unchanged, by the on-device evaluator (mobilereid/device/), so host and
device feed models identically. Runtimes are imported lazily: a device needs only the one it runs.

* ``.tflite``: ai-edge-litert's Interpreter, else tflite-runtime, else tensorflow's tf.lite (that order: the
  first two are what boards and phones have). ``num_threads`` is always passed (LiteRT's Python default is 1).
* ``.pte``: the ExecuTorch runtime (its Python binding takes torch tensors, so torch is needed for .pte only).
* ``.onnx``: onnxruntime on the CPU execution provider.
* TFLite Micro: the ``tflite-micro`` Python interpreter with the arena size from the sidecar.

Input: float32 NCHW batches from `mobilereid.data.preprocess` are converted to the artifact's layout and, for
integer-input artifacts, quantized with the sidecar's scale/zero-point; integer outputs are dequantized.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import weakref
from pathlib import Path

import numpy as np

from .data.preprocess import dequantize, quantize


class RuntimeMissing(RuntimeError):
    """The runtime an artifact needs is not installed; the message names the package."""


def read_sidecar(artifact: str | Path) -> dict:
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not side.is_file():
        raise FileNotFoundError(f"{artifact}: no metadata sidecar ({side.name}); export it with `mobilereid export`")
    return json.loads(side.read_text())


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


@contextlib.contextmanager
def _quiet_python_stderr():
    """Unless MOBILEREID_VERBOSE=1: Python's sys.stderr goes to /dev/null for the block (runtime load chatter)."""
    if os.environ.get("MOBILEREID_VERBOSE") == "1":
        yield
        return
    saved = sys.stderr
    with open(os.devnull, "w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr = saved


class Runner:
    """embed(x_nchw float32 (B,3,H,W)) -> float32 (B, D), one image at a time (artifacts are batch 1)."""

    def __init__(self, artifact: str | Path, meta: dict | None = None, threads: int = 2):
        self.path = Path(artifact)
        self.meta = meta if meta is not None else read_sidecar(self.path)
        self.threads = threads
        self.input = self.meta["input"]
        self.output = self.meta["output"]
        self._load()
        actual = self._input_shape()
        if actual is not None and list(actual) != list(self.input["shape"]):
            raise ValueError(
                f"{self.path}: its sidecar says input shape {list(self.input['shape'])}, the artifact takes "
                f"{list(actual)}; the sidecar does not belong to this file"
            )

    def _load(self):
        raise NotImplementedError

    def _input_shape(self) -> list[int] | None:
        """The input shape the artifact itself declares (None when the runtime cannot say)."""
        return None

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, x_chw: np.ndarray) -> np.ndarray:
        """One CHW float image -> the artifact's input tensor (layout, batch axis, quantization)."""
        x = x_chw if self.input["layout"] == "NCHW" else x_chw.transpose(1, 2, 0)
        x = np.ascontiguousarray(x[None], dtype=np.float32)
        q = self.input.get("quantization")
        if q:
            x = quantize(x, q["scale"], q["zero_point"], self.input["dtype"])
        return x

    def finish(self, y: np.ndarray) -> np.ndarray:
        q = self.output.get("quantization")
        y = dequantize(y, q["scale"], q["zero_point"]) if q else y.astype(np.float32)
        return y.reshape(1, -1)

    def embed(self, x_nchw: np.ndarray) -> np.ndarray:
        return np.concatenate([self.finish(self._run_one(self.prepare(x))) for x in x_nchw])

    def run_prepared(self, x: np.ndarray) -> np.ndarray:
        """Run one already-prepared input (for timing without preprocessing)."""
        return self._run_one(x)


class OnnxRunner(Runner):
    def _load(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("onnxruntime is not installed (pip install onnxruntime)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.in_name = self.sess.get_inputs()[0].name

    def _input_shape(self):
        shape = self.sess.get_inputs()[0].shape
        return shape if all(isinstance(d, int) for d in shape) else None

    def _run_one(self, x):
        return self.sess.run(None, {self.in_name: x})[0]


def litert_interpreter_class():
    for mod, name in (("ai_edge_litert.interpreter", "Interpreter"), ("tflite_runtime.interpreter", "Interpreter")):
        try:
            module = __import__(mod, fromlist=[name])
            return getattr(module, name)
        except ImportError:
            continue
    try:
        import tensorflow as tf

        return tf.lite.Interpreter
    except ImportError:
        raise RuntimeMissing("no TFLite runtime is installed (pip install ai-edge-litert)") from None


class TFLiteRunner(Runner):
    def _load(self):
        Interpreter = litert_interpreter_class()
        self.interp = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interp.allocate_tensors()
        self.in_index = self.interp.get_input_details()[0]["index"]
        self.out_index = self.interp.get_output_details()[0]["index"]

    def _input_shape(self):
        return [int(d) for d in self.interp.get_input_details()[0]["shape"]]

    def _run_one(self, x):
        self.interp.set_tensor(self.in_index, x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index).copy()


_EXECUTORCH_PROGRAMS: weakref.WeakSet = weakref.WeakSet()  # loaded programs: they hold the pool they were built on


def executorch_thread_pool(threads: int | None) -> int:
    """Size ExecuTorch's thread pool to ``threads`` (None: leave it) and return its size.

    ExecuTorch runs every XNNPACK delegate of a process on one pthreadpool, created with one thread per core when the
    runtime starts; `torch.set_num_threads` does not reach it (measured: a ".pte at 1 thread" ran on 2 threads on a
    2-core host, 1.9x faster than one thread). The binding's `_unsafe_reset_threadpool` replaces the pool, and the
    XNNPACK runtimes of programs loaded before keep a pointer to the old one, so the pool is resized only while no
    program loaded under another size is alive; otherwise this is an error, not a silent wrong thread count. Older
    runtimes without the call leave the pool at its default (then the returned size says what was used).
    """
    from executorch.extension.pybindings import portable_lib

    size = getattr(portable_lib, "_threadpool_get_thread_count", None)
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if size is None:
        return 0
    with _quiet_python_stderr():  # the pool's first use probes the CPU (cpuinfo) and logs through sys.stderr
        current = size()
    if threads is None or reset is None or current == threads:
        return current
    if len(_EXECUTORCH_PROGRAMS):
        gc.collect()
    if len(_EXECUTORCH_PROGRAMS):
        raise RuntimeError(
            f"ExecuTorch programs loaded on {current} threads are still in use; one process runs every program on "
            f"one thread pool, so {threads} threads cannot be used beside them"
        )
    with _quiet_python_stderr():
        reset(threads)
        return size()


def load_executorch_program(path: str | Path, threads: int | None, **options):
    """``Runtime.load_program`` on a pool of ``threads`` threads (`executorch_thread_pool`), kept track of."""
    from executorch.runtime import Runtime

    executorch_thread_pool(threads)
    with _quiet_python_stderr():  # ExecuTorch's C++ logs (cpuinfo probe) reach Python's sys.stderr through pybind
        program = Runtime.get().load_program(str(path), **options)
    _EXECUTORCH_PROGRAMS.add(program)
    return program


class ExecuTorchRunner(Runner):
    def _load(self):
        try:
            import executorch.runtime  # noqa: F401
            import torch
        except ImportError:
            raise RuntimeMissing("the ExecuTorch runtime is not installed (pip install executorch)") from None
        self._torch = torch
        with open(self.path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:6] != b"ET":  # the runtime aborts the process (C++ terminate) on foreign bytes
            raise ValueError(f"{self.path}: not an ExecuTorch program (no 'ET' flatbuffer identifier)")
        self.program = load_executorch_program(self.path, self.threads)
        with _quiet_python_stderr():
            self.method = self.program.load_method("forward")

    def _input_shape(self):
        try:
            return list(self.method.metadata.input_tensor_meta(0).sizes())
        except Exception:  # older runtimes do not expose the method metadata
            return None

    def _run_one(self, x):
        return self.method.execute([self._torch.from_numpy(x)])[0].numpy()


class TFLMRunner(Runner):
    def _load(self):
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError:
            raise RuntimeMissing("the TFLite Micro interpreter is not installed (pip install tflite-micro)") from None
        arena = int(self.meta.get("tflm", {}).get("arena_bytes", 0)) or 4 << 20
        self.interp = runtime.Interpreter.from_file(str(self.path), arena_size=arena)

    def _run_one(self, x):
        self.interp.set_input(np.ascontiguousarray(x), 0)  # TFLM copies the raw buffer, ignoring strides
        self.interp.invoke()
        return self.interp.get_output(0).copy()


RUNNERS = {
    "onnxruntime": OnnxRunner,
    "litert": TFLiteRunner,
    "executorch": ExecuTorchRunner,
    "tflite-micro": TFLMRunner,
}


RUNTIME_PACKAGES = {
    "litert": ("ai-edge-litert", "tflite-runtime", "tensorflow"),
    "executorch": ("executorch",),
    "onnxruntime": ("onnxruntime",),
    "tflite-micro": ("tflite-micro",),
}


def runtime_version(runtime: str) -> str:
    """The installed package that runs ``runtime`` and its version (latency records name it: kernels change)."""
    from importlib import metadata

    for name in RUNTIME_PACKAGES.get(runtime, ()):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def open_runner(artifact: str | Path, meta: dict | None = None, threads: int = 2, runtime: str | None = None) -> Runner:
    meta = meta if meta is not None else read_sidecar(artifact)
    name = runtime or meta["runtime"]
    if name not in RUNNERS:
        raise ValueError(f"{artifact}: unknown runtime {name!r} in metadata")
    return RUNNERS[name](artifact, meta, threads)
