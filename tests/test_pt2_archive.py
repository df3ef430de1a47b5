"""Crafted .pt2 archives that would run code or exhaust memory in torch.export.load: refused, and nothing runs.

Each archive is a real torch.export.save output with one member changed or added, the way an attacker would; the
payloads would leave a file behind if they ran."""

import json
import os
import pickle
import zipfile

import pytest
import torch

from mobilereid.errors import CheckpointError
from mobilereid.models.checkpoint import load_model


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.register_buffer("offset", torch.ones(8))  # a tensor constant next to the weights

    def forward(self, x):
        return self.conv(x).mean((2, 3)) + self.offset


class Touch:
    """Unpickling this creates ``self.path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def ok_pt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "ok.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.zeros(1, 3, 16, 8),)), str(path))
    return path


def rewrite(src: zipfile.ZipFile, dst_path, change=None, before=None, after=()):
    """Copy every member of ``src``, ``change(name, data) -> data``; ``before[name]`` = members written first."""
    with zipfile.ZipFile(dst_path, "w") as dst:
        for info in src.infolist():
            for name, data in (before or {}).get(info.filename.split("/", 1)[1], []):
                dst.writestr(info.filename.split("/", 1)[0] + "/" + name, data)
            data = src.read(info.filename)
            dst.writestr(info.filename, change(info.filename, data) if change else data)  # not `info`: it would change
        for name, data in after:
            dst.writestr(name, data)
    return dst_path


def test_a_clean_archive_loads_and_matches(ok_pt2):
    model, _ = load_model(ok_pt2)
    x = torch.randn(1, 3, 16, 8)
    assert torch.allclose(model(x), torch.export.load(str(ok_pt2)).module()(x))


def test_duplicate_member_names_with_an_opaque_pickle_are_refused_and_nothing_runs(ok_pt2, tmp_path):
    """Issue 33's critical case: zipfile reads the last of two same-named configs, torch the first."""
    pwned = tmp_path / "PWNED"
    evil_config = json.dumps(
        {"config": {"x": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
    ).encode()
    src = zipfile.ZipFile(ok_pt2)
    root = src.namelist()[0].split("/")[0]
    with pytest.warns(UserWarning, match="Duplicate name"):
        evil = rewrite(
            src,
            tmp_path / "evil.pt2",
            before={
                "data/constants/model_constants_config.json": [
                    ("data/constants/model_constants_config.json", evil_config)
                ]
            },
            after=[(f"{root}/data/constants/opaque_obj_0", pickle.dumps(Touch(pwned)))],
        )
    with pytest.raises(CheckpointError, match="two members named .*model_constants_config.json") as err:
        load_model(evil)
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    assert not pwned.exists()
    # the same payload without the duplicate: refused by what it is
    single = rewrite(
        src,
        tmp_path / "single.pt2",
        change=lambda n, d: evil_config if n.endswith("model_constants_config.json") else d,
        after=[(f"{root}/data/constants/opaque_obj_0", pickle.dumps(Touch(pwned)))],
    )
    with pytest.raises(CheckpointError, match=r"pickled payload \(opaque_obj_0"):
        load_model(single)
    assert not pwned.exists()


def test_guard_code_that_torch_would_exec_is_refused(ok_pt2, tmp_path):
    """ExportedProgram.module() exec's guards_code into the forward's guard function (found in this round)."""
    pwned = tmp_path / "PWNED"

    def guard(name, data):
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        program["guards_code"] = [f"__import__('os').system('touch {pwned}') == 0"]
        return json.dumps(program).encode()

    evil = rewrite(zipfile.ZipFile(ok_pt2), tmp_path / "guard.pt2", change=guard)
    with pytest.raises(CheckpointError, match="guard code"):
        load_model(evil)
    assert not pwned.exists()


@pytest.mark.parametrize(
    "case,match",
    [
        ("pickled_weight", "pickled payload"),
        ("aoti", "AOTInductor package"),
        ("legacy_weights", "legacy pickled weights"),
        ("symbolic", "symbolic shapes"),
        ("foreign_op", "only ATen operators"),
        ("sample_inputs", "not plain tensors"),
        ("outside_root", "outside the archive's root"),
    ],
)
def test_archive_contents_torch_would_execute_are_refused(ok_pt2, tmp_path, case, match):
    pwned = tmp_path / "PWNED"
    src = zipfile.ZipFile(ok_pt2)
    root = src.namelist()[0].split("/")[0]
    change, after = None, []
    if case == "pickled_weight":

        def change(n, d):
            if not n.endswith("model_weights_config.json"):
                return d
            c = json.loads(d)
            next(iter(c["config"].values()))["use_pickle"] = True
            return json.dumps(c).encode()
    elif case == "aoti":
        after = [(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")]
    elif case == "legacy_weights":
        after = [(f"{root}/data/weights/model.pt", pickle.dumps(Touch(pwned)))]
    elif case == "symbolic":

        def change(n, d):
            if not n.endswith("models/model.json"):
                return d
            p = json.loads(d)
            p["range_constraints"] = {"__import__('os').system('touch x')": {"min_val": 1, "max_val": 2}}
            return json.dumps(p).encode()
    elif case == "foreign_op":

        def change(n, d):
            return d.replace(b"torch.ops.aten.conv2d.default", b"torch.os.system") if n.endswith("model.json") else d
    elif case == "sample_inputs":

        def change(n, d):
            return pickle.dumps(Touch(pwned)) if n.endswith("sample_inputs/model.pt") else d
    elif case == "outside_root":
        after = [("elsewhere/version", b"1")]
    evil = rewrite(src, tmp_path / f"{case}.pt2", change=change, after=after)
    with pytest.raises(CheckpointError, match=match):
        load_model(evil)
    assert not pwned.exists()


def test_a_member_that_unpacks_past_the_limit_is_refused_before_reading(ok_pt2, tmp_path, monkeypatch):
    """A 3 MB archive with a 3 GiB deflated member took 6.6 GB of RAM; now the directory's sizes are checked first
    (the limit is lowered here so the test stays small: the same code path)."""
    from mobilereid.models import pt2_archive

    src = zipfile.ZipFile(ok_pt2)
    root = src.namelist()[0].split("/")[0]
    bomb = rewrite(src, tmp_path / "bomb.pt2")
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{root}/extra/blob", b"\0" * (8 << 20))
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(pt2_archive, "MAX_TOTAL_BYTES", 4 << 20)
    with pytest.raises(CheckpointError, match="unpacks to more than"):
        load_model(bomb)
    monkeypatch.setattr(pt2_archive, "MAX_TOTAL_BYTES", 64 << 20)
    monkeypatch.setattr(pt2_archive, "MAX_SMALL_BYTES", 1 << 20)
    with pytest.raises(CheckpointError, match=r"extra/blob unpacks to 8388608 bytes \(limit 1048576\)"):
        load_model(bomb)
