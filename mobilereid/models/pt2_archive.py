"""A `.pt2` (torch.export) archive checked member by member, and rewritten, before torch reads it.

Why a rewrite and not only a check: `torch.export.load` reads the archive with its own zip reader, which is not
Python's. Two readers can disagree about one file (Python's ``zipfile`` returns the *last* of two members with one
name, torch's reader the *first*), so a check that reads with one and a load that reads with the other checks
something other than what is loaded. Here every member is read once, checked, and written into a fresh archive
that torch then loads; what torch sees is exactly what was checked.

What `torch.export.load` (torch 2.13) would execute, and is therefore refused:
* pickles: ``use_pickle`` payloads (tensor subclasses) and legacy ``data/weights/model.pt`` files are unpickled
  with ``weights_only=False``; ``opaque_obj_*`` constants with `pickle.loads`; ``custom_obj_*`` as TorchScript
  objects; the sample inputs fall back to ``weights_only=False`` when ``weights_only=True`` fails;
* compiled code: ``data/aotinductor/`` holds shared libraries that are loaded (AOTInductor packages);
* Python source: ``guards_code`` entries are `exec`'d by ``ExportedProgram.module()``, and symbolic shape
  expressions (range constraints, ``as_expr`` sizes) are parsed with sympy's `sympify`, which evaluates them;
* operators outside ATen: graph node targets are resolved by name; only ``torch.ops.aten.*``,
  ``torch.ops.quantized_decomposed.*``, ``torch.ops.prims.*`` and ``_operator.getitem`` are accepted.
A ReID model for export is one static graph of ATen operators (batch 1, fixed H x W), so none of these are needed.

Sizes are checked before anything is read (a 3 MB archive can hold a 3 GiB deflated member): members and the whole
archive have limits, and every read stops at the size the directory declared.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import CheckpointError

MAX_TOTAL_BYTES = 4 << 30  # the whole archive unpacked: ViT-L float is ~1.2 GB
MAX_JSON_BYTES = 256 << 20  # the serialized graph and the payload configs
MAX_SMALL_BYTES = 64 << 20  # sample inputs, extra files, version markers
ALLOWED_TARGET = re.compile(
    r"(torch\.ops\.(aten|quantized_decomposed|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)"
)
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
MODEL_JSON = "models/model.json"
MARKERS = re.compile(r"(archive_format|archive_version|byteorder|version|\.data/[a-z_]+)")
REFUSED = [  # (member pattern under the root, why): named so the error says what the archive holds
    (re.compile(r"data/aotinductor/.*"), "an AOTInductor package (compiled code that loading would run)"),
    (
        re.compile(r"data/constants/(custom_obj|opaque_obj)_.*"),
        "a pickled Python or TorchScript object (loading would unpickle it)",
    ),
    (re.compile(r"data/(weights|constants)/[^/]*\.pt"), "legacy pickled weights (loaded with weights_only=False)"),
]


def fail(path: Path, what: str):
    raise CheckpointError(f"{path}: {what}; refused")


def _members(path: Path, zf: zipfile.ZipFile) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """Every member by its name under the archive's one root folder, with the sizes checked."""
    infos = zf.infolist()
    if not infos:
        fail(path, "an empty zip archive, not a torch.export program")
    names = [i.filename for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail(path, f"the archive holds two members named {dupes[0]} (zip readers disagree on which one counts)")
    root = names[0].split("/", 1)[0]
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        if info.is_dir():
            continue
        head, _, rel = info.filename.partition("/")
        if head != root or not rel:
            fail(path, f"member {info.filename!r} is outside the archive's root folder {root!r}")
        if info.flag_bits & 0x1:
            fail(path, f"member {info.filename} is encrypted")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            fail(path, f"the archive unpacks to more than {MAX_TOTAL_BYTES >> 30} GiB")
        members[rel] = info
    return root, members


def _kind(path: Path, rel: str) -> str:
    """What a member is: 'json', 'tensor', 'sample', 'small'; anything else is refused with the reason."""
    for pattern, why in REFUSED:
        if pattern.fullmatch(rel):
            fail(path, f"member {rel} is {why}")
    if rel in (MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        return "json"
    if re.fullmatch(r"data/weights/weight_\d+|data/constants/tensor_\d+", rel):
        return "tensor"
    if rel == SAMPLE_INPUTS:
        return "sample"
    if MARKERS.fullmatch(rel) or re.fullmatch(r"extra/[A-Za-z0-9_.-]+", rel):
        return "small"
    if rel.startswith("models/"):
        fail(path, f"member {rel}: only one program named 'model' is read (torch.export.save's layout)")
    fail(path, f"member {rel} is not part of a torch.export program")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    if info.file_size > limit:
        fail(path, f"member {info.filename} unpacks to {info.file_size} bytes (limit {limit})")
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        fail(path, f"member {info.filename} does not hold the {info.file_size} bytes its directory entry says")
    return data


def _check_payload_config(path: Path, rel: str, data: bytes, members: dict) -> None:
    try:
        config = json.loads(data)["config"]
        assert isinstance(config, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        fail(path, f"member {rel} is not a payload configuration")
    folder = rel.rsplit("/", 1)[0]
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            fail(path, f"member {rel}: entry {fqn!r} is not a payload description")
        name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            fail(path, f"{rel}: {fqn} is a pickled payload ({name}; torch would unpickle it with weights_only=False)")
        prefix = "weight_" if folder.endswith("weights") else "tensor_"
        if not re.fullmatch(prefix + r"\d+", name):
            fail(path, f"{rel}: {fqn} points at {name!r}, which is not a plain tensor payload")
        if f"{folder}/{name}" not in members:
            fail(path, f"{rel}: {fqn} points at {folder}/{name}, which the archive does not hold")
        if not isinstance(meta.get("tensor_meta"), dict) or "as_expr" in json.dumps(meta):
            fail(path, f"{rel}: {fqn} has no static tensor description")


def _walk(obj):
    """Every dict inside a parsed JSON document."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            yield o
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def _check_program(path: Path, data: bytes) -> None:
    try:
        program = json.loads(data)
        graph = program["graph_module"]["graph"]
        assert isinstance(graph, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        fail(path, f"member {MODEL_JSON} is not a serialized exported program")
    if program.get("guards_code"):
        fail(path, "the program carries guard code (ExportedProgram.module() would exec it); export with static shapes")
    if program.get("range_constraints"):
        fail(
            path,
            "the program has symbolic shapes (their expressions would be evaluated by sympy); export with "
            "static shapes, batch 1",
        )
    for d in _walk(program):
        if "as_expr" in d or "expr_str" in d:
            fail(
                path,
                "the program has symbolic shapes (their expressions would be evaluated by sympy); export "
                "with static shapes, batch 1",
            )
        if d.get("custom_obj_values") or "as_custom_obj" in d:
            fail(path, "the program holds custom (TorchScript) objects, which loading would unpickle")
        if "target" in d and "inputs" in d and "outputs" in d:  # a graph node
            target = d["target"]
            if not isinstance(target, str) or not ALLOWED_TARGET.fullmatch(target):
                fail(path, f"the program calls {str(target)[:80]!r}; only ATen operators are accepted")


def _check_sample_inputs(path: Path, data: bytes) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        fail(
            path,
            f"member {SAMPLE_INPUTS} holds pickled objects that are not plain tensors (it would run code on loading)",
        )


@contextlib.contextmanager
def checked_copy(path: Path):
    """Yields the path of a checked rewrite of ``path`` (removed afterwards); `torch.export.load` it, not ``path``."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a torch.export archive ({exc})") from None
    tmp = Path(tempfile.mkdtemp(prefix="mobilereid-pt2."))
    try:
        with zf:
            root, members = _members(path, zf)
            if MODEL_JSON not in members:
                raise CheckpointError(f"{path}: not a torch.export archive (no {MODEL_JSON} inside)")
            copy = tmp / "model.pt2"
            with zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as out:
                for rel, info in members.items():
                    kind = _kind(path, rel)
                    if kind == "tensor":
                        if info.file_size > MAX_TOTAL_BYTES:
                            fail(path, f"member {info.filename} unpacks to {info.file_size} bytes")
                        with zf.open(info) as src, out.open(f"{root}/{rel}", "w", force_zip64=True) as dst:
                            copied = _copy_capped(src, dst, info.file_size)
                        if copied != info.file_size:
                            fail(path, f"member {info.filename} does not hold the bytes its directory entry says")
                        continue
                    data = _read(zf, info, MAX_JSON_BYTES if kind == "json" else MAX_SMALL_BYTES, path)
                    if rel == MODEL_JSON:
                        _check_program(path, data)
                    elif kind == "json":
                        _check_payload_config(path, rel, data, members)
                    elif kind == "sample":
                        _check_sample_inputs(path, data)
                    out.writestr(f"{root}/{rel}", data)
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_capped(src, dst, size: int) -> int:
    """Copy at most ``size`` + 1 bytes (one more shows a member longer than declared)."""
    copied = 0
    while copied <= size:
        chunk = src.read(min(1 << 20, size + 1 - copied))
        if not chunk:
            break
        dst.write(chunk)
        copied += len(chunk)
    return copied
