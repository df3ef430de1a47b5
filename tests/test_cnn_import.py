"""`mobilereid import` of torchreid OSNets and fast-reid BoT/SBS ResNets: exact against the oracle in
cnn_reference.py (random weights in the sources' key layouts, several inputs), strict about every tensor."""

from __future__ import annotations

import re

import pytest
import torch
from cnn_reference import fastreid_forward, fastreid_state_dict, osnet_forward, osnet_state_dict
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import CheckpointError
from mobilereid.models.checkpoint import load_checkpoint
from mobilereid.models.importers import ImportOptions, import_weights

WIDTHS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}
SIZE = (128, 64)  # exactness does not depend on the input size; a quarter of 256x128's work


def _inputs(n=3, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *SIZE, generator=g) * scale


def _import(tmp_path, sd, name="w.pth", wrap=None, **opts):
    src = tmp_path / name
    torch.save(wrap(sd) if wrap else sd, src)
    out = tmp_path / (name + ".pt")
    res = import_weights(src, out, ImportOptions(img_size=SIZE, **opts))
    model, state = load_checkpoint(out)
    return res, model, state


OSNETS = (
    [(f"osnet_{w}", c, "bn") for w, c in WIDTHS.items()]
    + [("osnet_ibn_x1_0", WIDTHS["x1_0"], "ibn")]
    + [(f"osnet_ain_{w}", c, "ain") for w, c in WIDTHS.items()]
)


@pytest.mark.parametrize("name,channels,norm", OSNETS, ids=[o[0] for o in OSNETS])
def test_osnet_import_is_exact(tmp_path, name, channels, norm):
    sd = osnet_state_dict(channels, norm=norm, seed=len(name))
    wrap = (lambda d: {"state_dict": {"module." + k: v for k, v in d.items()}, "epoch": 3}) if norm == "bn" else None
    res, model, state = _import(tmp_path, sd, wrap=wrap)
    assert res.format == "torchreid" and model.preset == name and state["family"] == "osnet"
    x = _inputs()
    with torch.no_grad():
        ref = osnet_forward(
            sd,
            (x - torch.tensor(model.cfg.pixel_mean).view(1, 3, 1, 1))
            / torch.tensor(model.cfg.pixel_std).view(1, 3, 1, 1),
        )
        got = model(
            (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        )
    assert ref.shape == (3, 512) and ref.std() > 0.05  # a non-trivial feature
    assert (got - ref).abs().max() <= 1e-4


FASTREID = [
    ("bot_r50", {}),
    ("bot_r50_ibn", dict(ibn=True)),
    ("sbs_r50", dict(non_local=(0, 2, 3, 0), gem=True)),
    ("sbs_r50_ibn", dict(ibn=True, non_local=(0, 2, 3, 0), gem=True)),
]


@pytest.mark.parametrize("name,kw", FASTREID, ids=[f[0] for f in FASTREID])
def test_fastreid_import_is_exact(tmp_path, name, kw):
    sd = fastreid_state_dict(seed=len(name), **kw)
    res, model, state = _import(tmp_path, sd, wrap=lambda d: {"model": d, "iteration": 10})
    assert res.format == "fastreid" and model.preset == name and state["family"] == "resnet"
    assert res.unused == ["heads.weight"]  # the classifier: fast-reid's own inference never reads it
    x255 = _inputs(scale=255.0)
    with torch.no_grad():
        ref = fastreid_forward(sd, x255)
        got = model(
            (x255 / 255 - torch.tensor(model.cfg.pixel_mean).view(1, 3, 1, 1))
            / torch.tensor(model.cfg.pixel_std).view(1, 3, 1, 1)
        )
    assert ref.shape == (3, 2048) and ref.std() > 0.05
    assert (got - ref).abs().max() <= 1e-4
    assert model.cfg.pixel_mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)


def test_fastreid_old_zoo_keys_mean_legacy_maxpool(tmp_path):
    """heads.bnneck (before Sep 2020) dates the file before the Nov 2020 pool change: legacy, and it matters."""
    sd = fastreid_state_dict(layers=(1, 1, 1, 1), width=16, seed=3, old_keys=True)
    res, model, _ = _import(tmp_path, sd)
    assert model.cfg.maxpool == "legacy" and any("before Sep 2020" in n for n in res.notes)
    x255 = _inputs(scale=255.0)
    norm = lambda x: (
        (x / 255 - torch.tensor(model.cfg.pixel_mean).view(1, 3, 1, 1))
        / torch.tensor(model.cfg.pixel_std).view(1, 3, 1, 1)
    )  # noqa: E731
    with torch.no_grad():
        legacy, ceil = fastreid_forward(sd, x255, maxpool="legacy"), fastreid_forward(sd, x255, maxpool="ceil")
        got = model(norm(x255))
    assert (got - legacy).abs().max() <= 1e-4
    assert (legacy - ceil).abs().max() > 1e-3  # the two pools give different features: the choice is real
    _, model_ceil, _ = _import(tmp_path, sd, name="c.pth", maxpool="ceil")
    with torch.no_grad():
        assert (model_ceil(norm(x255)) - ceil).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "change,expected",
    [
        ("missing", "1 missing keys (e.g. conv3.0.gate.fc2.bias)"),
        ("extra", "unexpected keys (e.g. conv9.weight"),
        ("shape", "wrong shape"),
        ("ain_pattern", "AIN variant this importer does not know"),
    ],
)
def test_torchreid_import_is_strict(tmp_path, change, expected):
    sd = osnet_state_dict(WIDTHS["x0_25"], norm="ain" if change == "ain_pattern" else "bn", seed=5)
    if change == "missing":
        del sd["conv3.0.gate.fc2.bias"]
    elif change == "extra":
        sd["conv9.weight"] = torch.zeros(3)
    elif change == "shape":
        sd["conv5.conv.weight"] = torch.zeros(128, 128, 3, 3)
    else:
        sd["conv4.1.IN.weight"], sd["conv4.1.IN.bias"] = torch.ones(128), torch.zeros(128)
    src = tmp_path / "bad.pth"
    torch.save(sd, src)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        import_weights(src, tmp_path / "o.pt", ImportOptions(img_size=SIZE))
    assert not (tmp_path / "o.pt").exists()


def test_cli_refuses_disagreeing_pixel_statistics(tmp_path):
    sd = fastreid_state_dict(layers=(1, 1, 1, 1), width=16, seed=4)
    src = tmp_path / "fr.pth"
    torch.save({"model": sd}, src)
    out = tmp_path / "o.pt"
    r = CliRunner().invoke(app, ["import", str(src), "-o", str(out), "--pixel-mean", "0.5,0.5,0.5"])
    assert r.exit_code == 2 and not out.exists()
    assert r.output.strip().splitlines()[-1].startswith(f"error: {src}: its pixel_mean is [123.675, 116.28, 103.53]")
    r = CliRunner().invoke(app, ["import", str(src), "-o", str(out), "--img-size", "128x64"])
    assert r.exit_code == 0, r.output
    assert "fastreid bot_r1-1-1-1" in r.output
