"""The on-device evaluator and `mobilereid evaluate`, with real artifacts in real runtimes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import MobileReIDError
from mobilereid.evaluate import DEVICE_MODULES, evaluate_artifacts, make_bundle, parse_ssh
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def artifacts(sclnet_ckpt, sclnet_exports):
    """The ONNX and ExecuTorch artifacts of the run's shared export (conftest.py)."""
    return sclnet_ckpt, [r["artifact"] for r in sclnet_exports[1] if r["target"] in ("onnx", "executorch")]


def test_device_bundle_runs_without_torch_or_tensorflow(tmp_path, artifacts, tiny_dataset):
    bundle = make_bundle(tmp_path / "bundle")
    assert all((bundle / rel).is_file() for rel in DEVICE_MODULES)
    onnx = next(a for a in artifacts[1] if a.suffix == ".onnx")
    code = (
        f"import sys; sys.argv=['reid_eval', '--model', {str(onnx)!r}, '--data', {str(tiny_dataset)!r}, "
        f"'--out', {str(tmp_path / 'r')!r}];"
        f"sys.path.insert(0, {str(bundle)!r}); from mobilereid.device import evaluator as reid_eval; "
        "rc = reid_eval.main(sys.argv[1:]);"
        f"assert reid_eval.__file__.startswith({str(bundle)!r}), reid_eval.__file__;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')]; assert not bad, bad; "
        "sys.exit(rc)"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    summary = json.loads((tmp_path / "r" / f"{onnx.name}.summary.json").read_text())
    assert summary["runtime"] == "onnxruntime" and summary["latency"]["samples"] > 0


@pytest.mark.slow
def test_evaluate_local_report(artifacts, tiny_dataset, tmp_path):
    ckpt, arts = artifacts
    report = evaluate_artifacts(arts, tiny_dataset, tmp_path / "rep", reference=ckpt)
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {
        "report.json",
        "report.md",
        "cmc.png",
        "accuracy_latency.png",
        "raw",
    }
    fp32 = next(r for r in report["artifacts"] if r["name"].endswith(".onnx"))
    # the fp32 artifact reproduces the float reference exactly (up to float noise)
    assert fp32["drift"]["cosine_mean"] > 0.9999 and fp32["drift"]["top1_agreement"] == 1.0
    assert abs(fp32["delta_mAP"]) < 1e-6
    for r in report["artifacts"]:
        assert r["latency"]["p50_ms"] > 0 and r["latency"]["p90_ms"] >= r["latency"]["p50_ms"]
        assert 0 <= r["metrics"]["mAP"] <= 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "ΔmAP" in md and fp32["name"] in md
    # deployment matching: a threshold fitted on half of the identities and measured on the other half, and the
    # fp32 artifact fully compatible with the float model it came from (mixed search = its own search)
    assert {"roc.png", "report.html"} <= {p.name for p in (tmp_path / "rep").iterdir()}
    t = fp32["matching"]["threshold"]
    assert t["target_far"] == 1e-3 and -1 <= t["value"] <= 1 and t["held_out_pairs"]["negative"] > 0
    assert 0 <= fp32["matching"]["eer"] <= 1
    c = fp32["compatibility"]
    assert c["cosine_mean"] > 0.9999 and abs(c["mixed_mAP"] - fp32["metrics"]["mAP"]) < 1e-6 and "warning" not in c
    assert "## Deployment matching" in md


def test_evaluate_errors(artifacts, tiny_dataset, tmp_path):
    ckpt, arts = artifacts
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(arts[0], lonely)
    with pytest.raises(MobileReIDError, match="lonely.onnx: no metadata sidecar"):
        evaluate_artifacts([lonely], tiny_dataset, tmp_path / "r")
    other = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test").eval())
    with pytest.raises(MobileReIDError, match="exported from another checkpoint than --reference"):
        evaluate_artifacts(arts[:1], tiny_dataset, tmp_path / "r", reference=other)
    with pytest.raises(MobileReIDError, match="embedding size 128 does not match the reference"):
        evaluate_artifacts(arts[:1], tiny_dataset, tmp_path / "r", reference=other, allow_mismatch=True)
    with pytest.raises(MobileReIDError, match="expected local, ssh"):
        evaluate_artifacts(arts[:1], tiny_dataset, tmp_path / "r", device="bluetooth")
    with pytest.raises(MobileReIDError):
        evaluate_artifacts(arts[:1], tiny_dataset, tmp_path / "r", device="ssh://nobody@127.0.0.1:1")
    assert not (tmp_path / "r").exists()  # no partial report


def test_missing_runtime_is_named(artifacts, tiny_dataset, tmp_path):
    """A device without the runtime: the evaluator's error names the package to install."""

    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.path.insert(0, '.');"
        "from mobilereid.runtimes import open_runner; open_runner(sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(artifacts[1][0])],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode != 0 and "pip install onnxruntime" in proc.stderr


def test_parse_ssh():
    assert parse_ssh("ssh://pi@board.local:2222") == ("pi@board.local", 2222)
    assert parse_ssh("ssh://board") == ("board", 22)
    with pytest.raises(MobileReIDError):
        parse_ssh("ssh://a b")
    for bad in ("ssh://-oProxyCommand=touch${IFS}x", "ssh://-oProxyCommand=x@host", "ssh://pi@-oProxyCommand=x"):
        with pytest.raises(MobileReIDError, match="cannot start with '-'"):
            parse_ssh(bad)


def test_tampered_artifact_and_broken_sidecars_are_refused(artifacts, tiny_dataset, tmp_path):
    ckpt, arts = artifacts
    onnx = next(a for a in arts if a.suffix == ".onnx")
    work = tmp_path / "t"
    work.mkdir()
    copy = work / onnx.name
    shutil.copy(onnx, copy)
    shutil.copy(onnx.with_name(onnx.name + ".json"), work / (onnx.name + ".json"))
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(MobileReIDError, match="sha256 differs from its sidecar"):
        evaluate_artifacts([copy], tiny_dataset, tmp_path / "r")
    (work / (onnx.name + ".json")).write_text("{not json")
    with pytest.raises(MobileReIDError, match="not a valid JSON sidecar"):
        evaluate_artifacts([copy], tiny_dataset, tmp_path / "r")
    with pytest.raises(MobileReIDError, match="is a directory"):
        evaluate_artifacts([work], tiny_dataset, tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_flip_averaging_and_verification_status(artifacts, tiny_dataset, tmp_path, capsys):
    ckpt, arts = artifacts
    onnx = next(a for a in arts if a.suffix == ".onnx")
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(onnx, work / onnx.name)
    meta = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    del meta["verification"]
    (work / (onnx.name + ".json")).write_text(json.dumps(meta))
    report = evaluate_artifacts([work / onnx.name], tiny_dataset, tmp_path / "rep", reference=ckpt, flip=True)
    row = report["artifacts"][0]
    assert report["flip"] and row["flip"] and row["verification"] == "missing"
    assert row["drift"]["cosine_mean"] > 0.9999  # the reference is flip-averaged the same way
    plain = evaluate_artifacts([onnx], tiny_dataset, tmp_path / "rep2", reference=ckpt)
    assert abs(plain["reference"]["metrics"]["mAP"] - report["reference"]["metrics"]["mAP"]) > 0
    assert "export verification missing" in capsys.readouterr().err
    assert "flip-averaged" in (tmp_path / "rep" / "report.md").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with a throwaway key, for the ssh round trip."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or os.geteuid() != 0:
        pytest.skip("openssh-server is not installed (make test installs it as root)")
    keydir = tmp_path / "ssh"
    keydir.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "client")], check=True)
    (keydir / "authorized_keys").write_text((keydir / "client.pub").read_text())
    os.chmod(keydir / "authorized_keys", 0o600)
    port = _free_port()
    Path("/run/sshd").mkdir(exist_ok=True)
    cfg = keydir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keydir / 'host'}\n"
        f"AuthorizedKeysFile {keydir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n"
        "Subsystem sftp internal-sftp\n"
    )
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE)
    options = [
        "-i",
        str(keydir / "client"),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={keydir / 'known'}",
    ]
    for _ in range(50):
        if (
            subprocess.run(
                ["ssh", "-p", str(port), "-o", "BatchMode=yes", *options, "root@127.0.0.1", "true"], capture_output=True
            ).returncode
            == 0
        ):
            break
        time.sleep(0.2)
    yield port, options
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_ssh_round_trip(local_sshd, artifacts, tiny_dataset, tmp_path):
    port, options = local_sshd
    ckpt, arts = artifacts
    onnx = [a for a in arts if a.suffix == ".onnx"]
    report = evaluate_artifacts(
        onnx,
        tiny_dataset,
        tmp_path / "rep",
        reference=ckpt,
        device=f"ssh://root@127.0.0.1:{port}",
        remote_python=sys.executable,
        ssh_options=options,
    )
    assert report["artifacts"][0]["drift"]["cosine_mean"] > 0.9999
    assert report["artifacts"][0]["host"]["python"]
    leftovers = subprocess.run(
        ["ssh", "-p", str(port), *options, "root@127.0.0.1", "ls -d /tmp/mobilereid-eval.* 2>/dev/null | wc -l"],
        capture_output=True,
        text=True,
    )
    assert leftovers.stdout.strip() == "0"  # the remote folder was removed


def test_cli_evaluate(artifacts, tiny_dataset, tmp_path):
    ckpt, arts = artifacts
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(arts[0]),
            "--data",
            str(tiny_dataset),
            "--reference",
            str(ckpt),
            "-o",
            str(tmp_path / "rep"),
            "--gallery-formats",
            "int8,binary,pca4",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "report.md" in r.output and (tmp_path / "rep" / "accuracy_latency.png").is_file()
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    formats = rep["artifacts"][0]["gallery_formats"]
    assert [f["format"] for f in formats] == ["float32", "int8", "binary", "pca4"]
    assert formats[-1]["bytes_per_item"] == 16 and "## Gallery formats" in (tmp_path / "rep" / "report.md").read_text()
    (pca_file,) = rep["pca_files"]  # the projection fitted on the artifact's embeddings of training images
    with np.load(tmp_path / "rep" / pca_file) as z:
        assert z["components"].shape[0] == 4 and z["mean"].shape[0] == z["components"].shape[1]
    no_train = tmp_path / "no_train"
    for sub in ("query", "bounding_box_test"):
        shutil.copytree(tiny_dataset / sub, no_train / sub)
    r = runner.invoke(
        app, ["evaluate", str(arts[0]), "-d", str(no_train), "-o", str(tmp_path / "r2"), "--gallery-formats", "pca4"]
    )
    assert r.exit_code == 2 and "PCA is fitted on the training split" in r.output


def test_write_threshold_puts_the_calibrated_threshold_into_the_sidecar(artifacts, tiny_dataset, tmp_path):
    """`--write-threshold`: the artifact's own same-person threshold lands in its sidecar (`match`), tied to its
    sha256, where the Android core's matcher reads it (tested in Kotlin: MetadataAndJsonTest)."""
    ckpt, arts = artifacts
    work = tmp_path / "w"
    work.mkdir()
    art = work / arts[0].name
    shutil.copy(arts[0], art)
    shutil.copy(arts[0].with_name(arts[0].name + ".json"), art.with_name(art.name + ".json"))
    before = json.loads(art.with_name(art.name + ".json").read_text())
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(art),
            "-d",
            str(tiny_dataset),
            "--reference",
            str(ckpt),
            "-o",
            str(tmp_path / "rep"),
            "--far",
            "0.01",
            "--write-threshold",
            "--gallery-formats",
            "int8,pca4",
            "--app-gallery",
            "pca4",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.loads(art.with_name(art.name + ".json").read_text())
    row = json.loads((tmp_path / "rep" / "report.json").read_text())["artifacts"][0]
    t = row["matching"]["threshold"]
    assert meta["match"]["threshold"] == t["value"] and meta["match"]["far"] == 0.01
    pca = next(f for f in row["gallery_formats"] if f["format"] == "pca4")  # the app's stored format
    stored = meta["match"]["gallery"]
    assert stored["format"] == "pca4" and stored["threshold"] == pca["threshold"]["value"] != t["value"]
    with np.load(tmp_path / "rep" / "raw" / f"{row['result_key']}.pca4.npz") as fitted:
        assert np.array_equal(np.asarray(stored["components"], np.float32), fitted["components"])
        assert np.array_equal(np.asarray(stored["mean"], np.float32), fitted["mean"])
    assert np.asarray(stored["components"]).shape == (4, meta["model"]["embedding_dim"])
    assert meta["match"]["artifact_sha256"] == meta["sha256"] == before["sha256"]
    assert {k: v for k, v in meta.items() if k != "match"} == before  # nothing else in the sidecar changed
    assert (
        "Same-person thresholds of the formats that score on a scale of their own"
        in (tmp_path / "rep" / "report.md").read_text()
    )


def test_app_gallery_choices_and_errors(artifacts, tiny_dataset, tmp_path):
    """`--app-gallery`: float16 scores the cosine, int8 keeps its global scale, binary its own threshold; a format the
    app does not store, or one not measured, is a one-line error before anything runs."""
    from mobilereid.evaluate import app_gallery_block

    row = {"gallery_formats": [{"format": "int8", "scale": 0.01, "delta_mAP": -0.001}], "result_key": "k"}
    assert app_gallery_block(row, "int8", None) == {"format": "int8", "scale": 0.01, "delta_mAP": -0.001}
    art = artifacts[1][0]
    threshold = {"value": 0.5, "held_out_far": 0.001, "held_out_tar": 0.2}
    row["gallery_formats"].append({"format": "binary", "delta_mAP": -0.01, "threshold": threshold})
    assert app_gallery_block(row, "binary", None) == {
        "format": "binary",
        "threshold": 0.5,
        "held_out_far": 0.001,
        "held_out_tar": 0.2,
        "delta_mAP": -0.01,
    }
    row["gallery_formats"].append({"format": "float16", "delta_mAP": 0.0})
    assert app_gallery_block(row, "float16", None) == {"format": "float16", "delta_mAP": 0.0}  # the cosine's threshold
    for fmt, formats, says in [
        ("bfloat16", "float16", "the app stores"),
        ("float16", "int8", "not measured"),
        ("pca8", "int8", "not measured"),
    ]:
        out = tmp_path / fmt
        args = ["evaluate", str(art), "-d", str(tiny_dataset), "-o", str(out), "--write-threshold"]
        r = runner.invoke(app, args + ["--gallery-formats", formats, "--app-gallery", fmt])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not out.exists()


def test_cli_benchmark_one_table(artifacts, tiny_dataset, tmp_path):
    ckpt, _ = artifacts
    r = runner.invoke(
        app, ["benchmark", str(ckpt), "--data", str(tiny_dataset), "--target", "onnx", "-o", str(tmp_path / "b")]
    )
    assert r.exit_code == 0, r.output
    assert "report.md" in r.output
    report = json.loads((tmp_path / "b" / "report" / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == ["sclnet_test.onnx"]


def test_device_copy_has_manifest_and_lossless_pixels(tiny_dataset, tmp_path):
    """What adb pushes: PNG re-encodes of exactly the host's decoded pixels, labelled by the host's reader."""
    from mobilereid.data.datasets import load_dataset
    from mobilereid.data.preprocess import load_rgb
    from mobilereid.evaluate import copy_eval_split

    dest = copy_eval_split(tiny_dataset, tmp_path / "push", lossless=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    ds = load_dataset(tiny_dataset, need_train=False)
    assert manifest["format"] == "mobilereid-eval-manifest"
    assert [(e["pid"], e["camid"]) for e in manifest["query"]] == [(s.pid, s.camid) for s in ds.query]
    assert len(manifest["gallery"]) == len(ds.gallery)
    for entry, sample in zip(manifest["query"][:5], ds.query):
        assert entry["file"].endswith(".png") and np.array_equal(load_rgb(dest / entry["file"]), load_rgb(sample.path))
    again = load_dataset(dest, need_train=False)  # the ssh evaluator re-reads the copy with the same reader
    assert len(again.query) == len(ds.query) and len(again.gallery) == len(ds.gallery)


def test_random_bytes_pte_and_foreign_sidecar_are_one_line_errors(artifacts, tiny_dataset, tmp_path):
    ckpt, arts = artifacts
    pte = next(a for a in arts if a.suffix == ".pte")
    onnx = next(a for a in arts if a.suffix == ".onnx")
    for src, mutate, msg in (
        (pte, "bytes", "not an ExecuTorch program"),
        (onnx, "shape", "sidecar does not belong to this file"),
    ):
        work = tmp_path / mutate
        work.mkdir()
        dst = work / src.name
        shutil.copy(src, dst)
        meta = json.loads(src.with_name(src.name + ".json").read_text())
        if mutate == "bytes":
            dst.write_bytes(np.random.default_rng(0).bytes(4096))
        else:
            meta["input"]["shape"] = [1, 3, 128, 64]
        (work / (src.name + ".json")).write_text(json.dumps(meta))
        from mobilereid.runtimes import open_runner

        with pytest.raises(ValueError, match=msg) as info:  # in-process: the evaluator prints this line and exits 2
            open_runner(dst, meta)
        assert str(dst) in str(info.value) and "\n" not in str(info.value)


def test_executorch_runs_on_the_thread_count_asked(artifacts):
    """ExecuTorch's XNNPACK pool is its own (torch.set_num_threads does not size it): the runner sizes it, and refuses
    a second size while a program built on the first is alive (its delegate holds the old pool)."""
    from mobilereid.runtimes import executorch_thread_pool, open_runner

    pte = next(a for a in artifacts[1] if a.suffix == ".pte")
    one = open_runner(pte, threads=1)
    x = np.random.default_rng(0).random((1, *one.input["shape"][1:]), np.float32)
    out = one.embed(x)
    assert executorch_thread_pool(None) == 1
    with pytest.raises(RuntimeError, match="thread pool"):
        open_runner(pte, threads=2)
    del one
    two = open_runner(pte, threads=2)
    np.testing.assert_allclose(two.embed(x), out, rtol=1e-5, atol=1e-5)
    assert executorch_thread_pool(None) == 2
