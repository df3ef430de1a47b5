"""Any torch ReID model as a torch.export program (.pt2): exported to every target its ops allow, verified there."""

import zipfile

import numpy as np
import pytest
import torch
from osnet_like import OSNetLike, save_osnet_pt2

from mobilereid.errors import CheckpointError
from mobilereid.export import export_checkpoint
from mobilereid.models.checkpoint import load_checkpoint, load_model
from mobilereid.models.external import ExternalReID
from mobilereid.runtimes import read_sidecar


@pytest.fixture(scope="module")
def osnet_pt2(tmp_path_factory, tiny_dataset):
    from mobilereid.data.preprocess import PreprocessSpec, preprocess_file

    spec = PreprocessSpec(height=64, width=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    files = sorted((tiny_dataset / "bounding_box_train").glob("*.jpg"))[:32]
    images = torch.from_numpy(np.stack([preprocess_file(f, spec) for f in files]))
    path = tmp_path_factory.mktemp("pt2") / "osnet.pt2"
    save_osnet_pt2(path, images)
    path.with_suffix(".toml").write_text('mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\ncolour_order = "RGB"\n')
    return path


def test_pt2_loads_with_its_preprocessing_and_matches_the_module(osnet_pt2):
    model, state = load_model(osnet_pt2)
    assert isinstance(model, ExternalReID) and state["family"] == "external"
    assert model.cfg.img_size == (64, 32) and model.feature_dim == 64 and model.cfg.pixel_std == (0.25, 0.25, 0.25)
    n = sum(p.numel() for p in OSNetLike().parameters())
    assert 20_000 < n < 2_000_000  # OSNet x0.25 territory at this width


@pytest.mark.slow
def test_pt2_exports_to_every_target_and_verifies(osnet_pt2, tiny_dataset, tmp_path):
    # every target; ExecuTorch's int8 and LiteRT's fp32 and int8 variants (fp32 ExecuTorch and dynamic LiteRT take the
    # same routes, exported for other models in tests/test_export.py): user recipes laid over the defaults
    (tmp_path / "et.toml").write_text('target = "executorch"\nvariants = ["int8"]\n')
    (tmp_path / "tfl.toml").write_text('target = "tflite"\nvariants = ["fp32", "int8"]\n')
    results = export_checkpoint(
        osnet_pt2,
        "onnx,executorch,tflite",
        tiny_dataset,
        tmp_path / "exp",
        int8=True,
        recipe_path=[tmp_path / "et.toml", tmp_path / "tfl.toml"],
    )
    got = sorted((r["target"], r["precision"]) for r in results)
    assert got == [("executorch", "int8"), ("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "int8")]
    for r in results:
        meta = read_sidecar(r["artifact"])
        assert meta["model"]["family"] == "external" and meta["preprocess"]["std"] == [0.25, 0.25, 0.25]
        v = r["verification"]
        assert v["images"] == 15
        if r["precision"] == "fp32":  # the same graph in every runtime
            assert v["passed"] and v["cosine_min"] > 0.9999, (r["artifact"].name, v)
        else:  # an untrained random-weight CNN (pairwise cosine ~0.75): INT8 drift is measured, not expected to pass
            assert v["cosine_mean"] > 0.85, (r["artifact"].name, v)


def test_pt2_bad_inputs(tmp_path, osnet_pt2):
    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.amax((2, 3))

    torch.export.save(torch.export.export(TwoOutputs(), (torch.randn(1, 3, 8, 8),)), str(tmp_path / "two.pt2"))
    with pytest.raises(CheckpointError, match="must return one"):
        load_model(tmp_path / "two.pt2")

    class FourD(torch.nn.Module):
        def forward(self, x):
            return x * 2

    torch.export.save(torch.export.export(FourD(), (torch.randn(1, 3, 8, 8),)), str(tmp_path / "map.pt2"))
    with pytest.raises(CheckpointError, match=r"returns \(1, 3, 8, 8\)"):
        load_model(tmp_path / "map.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a torch.export archive"):
        load_model(tmp_path / "junk.pt2")
    with pytest.raises(CheckpointError, match="not trained, compressed or fine-tuned"):
        load_checkpoint(osnet_pt2)
    torch.export.save(torch.export.export(OSNetLike().eval(), (torch.randn(1, 3, 64, 32),)), str(tmp_path / "net.pt2"))
    (tmp_path / "net.toml").write_text('colour_order = "BGR"\n')
    with pytest.raises(CheckpointError, match="only RGB"):
        load_model(tmp_path / "net.pt2")
    (tmp_path / "net.toml").write_text("mean = [0.5, 0.5]\n")
    with pytest.raises(CheckpointError, match="mean must be three numbers"):
        load_model(tmp_path / "net.pt2")


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pt2_with_a_pickle_payload_is_refused_before_unpickling(tmp_path, osnet_pt2, capsys):
    """torch.export.load would fall back to weights_only=False on this entry; the archive check refuses it first."""
    src = zipfile.ZipFile(osnet_pt2)
    with zipfile.ZipFile(tmp_path / "evil.pt2", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                import io

                buf = io.BytesIO()
                torch.save({"x": Payload()}, buf)
                data = buf.getvalue()
            dst.writestr(info, data)
    with pytest.raises(CheckpointError, match="not plain tensors"):
        load_model(tmp_path / "evil.pt2")
    assert "pwned" not in capsys.readouterr().out


def test_pt2_is_a_reference_for_evaluate(osnet_pt2, tiny_dataset, tmp_path):
    from mobilereid.evaluate import evaluate_artifacts

    (onnx,) = export_checkpoint(osnet_pt2, "onnx", tiny_dataset, tmp_path / "exp")
    report = evaluate_artifacts([onnx["artifact"]], tiny_dataset, tmp_path / "rep", reference=osnet_pt2)
    row = report["artifacts"][0]
    assert row["integrity"] == {"sha256_matches": True, "reference_is_source": True}
    assert row["drift"]["cosine_mean"] > 0.9999 and abs(row["delta_mAP"]) < 1e-6
