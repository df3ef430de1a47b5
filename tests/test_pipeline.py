"""The main job on a tiny config: every stage runs for real, a re-run skips what did not change."""

import json

import pytest
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import MobileReIDError
from mobilereid.pipeline import load_config

runner = CliRunner()

TINY = """
[data]
ids = 10
test_ids = 0
cameras = 3
height = 64
width = 32

[models.sclnet]
preset = "sclnet_test"
epochs = 1
p = 3
k = 2

[models.vit]
preset = "vit_test"
epochs = 1
p = 3
k = 2
options = { gelu = "tanh", num_heads = 4, img_size = [64, 32] }

[compress]
keep_ratio = 0.75
head_rate = 0.25
token_rate = 0.2
rounds = 1
arch_epochs = 1
token_epochs = 0
final_epochs = 0

[quant_finetune]
model = "sclnet"  # off in the default job; the chain with it is tested here
epochs = 1

[export.targets]
sclnet = ["onnx", "tflite"]
vit = ["executorch"]
"""


def run_config(tmp_path, text: str):
    """`mobilereid pipeline` on a config text in a fresh work folder: (config path, work folder, report.json)."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    work = tmp_path / "run"
    r = runner.invoke(app, ["pipeline", str(cfg), "--workdir", str(work)])
    assert r.exit_code == 0, r.output
    return cfg, work, json.loads((work / "report" / "report.json").read_text())


@pytest.mark.slow
def test_pipeline_end_to_end_and_skip(tmp_path):
    cfg, work, report = run_config(tmp_path, TINY)
    assert set(report["evaluations"]) == {"sclnet", "vit_compressed"}
    names = [a["name"] for a in report["evaluations"]["sclnet"]["artifacts"]]
    assert "model_int8.tflite" in names and "model.onnx" in names
    assert report["stages"]["compress"]["after"]["gmacs"] < report["stages"]["compress"]["before"]["gmacs"]
    qft = report["stages"]["quant_finetune_sclnet"]
    assert len(qft["history"]) == 1 and 0.0 <= qft["after"]["mAP"] <= 1.0
    assert qft["before"] == report["stages"]["train_sclnet"]["metrics"]  # the train stage's scores of the same weights,
    log = (work / "logs" / "sclnet.log").read_text()  # not scored a second time before epoch 1:
    assert "query images" not in log.split("[quant_finetune_sclnet] running")[1].split("quant-finetune epoch 1/")[0]
    md = (work / "report" / "report.md").read_text()
    assert "## Compression" in md and "ΔmAP" in md and "## Quantization fine-tuning of `sclnet`" in md
    # drift is measured from the model the user trained (before compression / quant-finetune), the exported one second
    for name, chain in (("sclnet", "train_sclnet"), ("vit_compressed", "train_vit")):
        ev = report["evaluations"][name]
        assert (
            ev["baseline"]["checkpoint"].endswith(f"{chain}/model.pt")
            and ev["reference"]["checkpoint"] != ev["baseline"]["checkpoint"]
        )
        assert all("delta_mAP_vs_baseline" in r and "delta_mAP" in r for r in ev["artifacts"])
    assert "ΔmAP vs yours" in md and "top-1 agree vs yours" in md and "Your float model" in md
    assert (work / "report" / "accuracy_latency_all.png").is_file()
    again = runner.invoke(app, ["pipeline", str(cfg), "--workdir", str(work)])
    assert again.exit_code == 0, again.output
    assert again.output.count("up to date, skipped") >= 7


def test_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dataa]\nids = 3\n")
    with pytest.raises(MobileReIDError, match="unknown section"):
        load_config(bad)
    bad.write_text("[quant_finetune]\nepoch = 3\n")
    with pytest.raises(MobileReIDError, match=r"unknown key\(s\) epoch in \[quant_finetune\]"):
        load_config(bad)
    bad.write_text("not toml = = 1")
    with pytest.raises(MobileReIDError, match="not valid TOML"):
        load_config(bad)
    r = runner.invoke(app, ["pipeline", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "pipeline config not found" in r.output


def test_pipeline_never_deletes_a_folder_it_did_not_make(tmp_path):
    """A user's folder that happens to carry a stage's name (W/data/my_real_dataset) stops the run before any work."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    work = tmp_path / "w"
    mine = work / "data" / "my_real_dataset"
    mine.mkdir(parents=True)
    (mine / "labels.txt").write_text("precious\n")
    r = runner.invoke(app, ["pipeline", str(cfg), "--workdir", str(work)])
    assert r.exit_code == 2 and "was not made by `mobilereid pipeline`; refusing to delete it" in r.output
    assert (mine / "labels.txt").read_text() == "precious\n"
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # nothing else was started
    (work / "export_vit").write_text("a file")
    r = runner.invoke(app, ["pipeline", str(cfg), "--workdir", str(work)])
    assert r.exit_code == 2 and (work / "export_vit").read_text() == "a file"


def test_stage_folder_it_made_is_rebuilt(tmp_path):
    from mobilereid.filesafety import STAGE_MARK
    from mobilereid.pipeline import Stage

    st = Stage(tmp_path, "train_x")
    st.start("k1")
    (st.dir / "old.pt").write_text("x")
    st.done("k1", {}, 0.0)
    assert st.fresh("k1", [st.dir / "old.pt"]) and not st.fresh("k2", [st.dir / "old.pt"])
    st.start("k2")
    assert not (st.dir / "old.pt").exists() and (st.dir / STAGE_MARK).is_file()


@pytest.mark.parametrize(
    "text,msg",
    [
        ("[data]\nids = 1\n", r"\[data\] ids = 1: must be >= 4"),
        ('[models.sclnet]\nepochs = "ten"\n', r"\[models.sclnet\] epochs = 'ten': must be a whole number"),
        ("[models.vit]\nepoch = 3\n", r"unknown key\(s\) epoch in \[models.vit\]"),
        ("[pipeline]\nparallel = 1\n", r"\[pipeline\] parallel = 1: must be true or false"),
        (
            "[quant_finetune]\ngive_up_drop = 0.001\n",
            r"give_up_drop = 0.001: expected 0 \(never\) or at least max_map_drop",
        ),
        # the default job's test_ids (100) under a config's smaller ids
        ("[data]\nids = 20\n", r"\[data\] test_ids = 100 of ids = 20: expected a train and a test split"),
    ],
)
def test_pipeline_values_of_the_wrong_type_or_range(tmp_path, text, msg):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(MobileReIDError, match=msg):
        load_config(tmp_path / "c.toml")


def test_tiny_config_is_valid(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    assert load_config(tmp_path / "tiny.toml")["models"]["vit"]["model"] == "vit_test"


def test_default_job_keeps_your_embedding_and_the_compact_one_trades_it_for_size():
    """The default job compresses the ViT without K/V pruning and with the compatibility term, and runs no quantization
    fine-tuning; `mobilereid pipeline compact` is the default with those two changes undone (measured:
    docs/results/2026-12-07-compatible-job.md)."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "mobilereid" / "configs"
    cfg, default = load_config(configs / "compact.toml"), load_config(None)
    assert default["compress"]["compat_weight"] == 10 and default["compress"]["token_rate"] == 0.0
    assert default["compress"]["keep_ratio"] == 0.9 and default["quant_finetune"]["model"] == ""
    assert default["data"]["test_ids"] == 100 and default["data"]["ids"] == 150  # 50 to train on
    assert cfg["compress"]["compat_weight"] == 0 and cfg["compress"]["token_rate"] == 0.6
    assert cfg["compress"]["keep_ratio"] == 0.75 and cfg["quant_finetune"]["model"] == "sclnet"
    assert cfg["models"] == default["models"] and cfg["export"] == default["export"] and cfg["data"] == default["data"]


def test_shipped_mcu_config_is_valid_and_runs_only_its_chain(tmp_path):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "mobilereid" / "configs" / "mcu.toml")
    assert cfg["quant_finetune"]["model"] == ""  # measured: PTQ alone drifts less from the trained model (README)
    assert cfg["pipeline"]["chains"] == ["mcu"] and cfg["export"]["targets"]["mcu"] == ["tflm"]
    assert cfg["models"]["mcu"]["model"] == "sclnet_micro" and cfg["export"]["board"] == "cortex-m4"
    (tmp_path / "c.toml").write_text('[pipeline]\nchains = ["nope"]\n')
    with pytest.raises(
        MobileReIDError, match=r"\[pipeline\] chains = \['nope'\]: expected names of \[models.NAME\] tables"
    ):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('[quant_finetune]\nmodel = ["sclnet", 3]\n')
    with pytest.raises(MobileReIDError, match=r"\[quant_finetune\] model"):
        load_config(tmp_path / "c.toml")


MCU = """
[data]
ids = 10
test_ids = 0
cameras = 3
height = 64
width = 32

[pipeline]
chains = ["mcu"]

[models.mcu]
preset = "sclnet_test"
epochs = 1
p = 3
k = 2

[quant_finetune]
model = ["mcu"]
epochs = 1

[export]
board = "nrf52840"

[export.targets]
mcu = ["tflm"]
"""


@pytest.mark.slow
def test_pipeline_mcu_chain_alone(tmp_path):
    """An opt-in chain runs alone (chains), is quant-fine-tuned (a list of models), exported for the configured board,
    evaluated in the TFLite Micro interpreter, and the report carries the export notes (arena, estimate)."""
    _, work, report = run_config(tmp_path, MCU)
    assert set(report["evaluations"]) == {"mcu"} and not (work / "train_sclnet").exists()
    assert "quant_finetune_mcu" in report["stages"]
    (artifact,) = report["evaluations"]["mcu"]["artifacts"]
    assert artifact["runtime"] == "tflite-micro" and artifact["name"] == "model_tflm_int8.tflite"
    md = (work / "report" / "report.md").read_text()
    assert "## Export notes of `mcu`" in md and "TFLite Micro (nrf52840)" in md and "estimate, not measured" in md
    assert (work / "export_mcu" / "model_tflm_memory.png").is_file()


def test_threads_follow_the_chains_still_running():
    """cores.py: a chain process re-reads its share between epochs and stages; outside a chain nothing changes."""
    import torch

    from mobilereid import cores

    before = torch.get_num_threads()
    share = [1]
    try:
        cores.rebalance()
        assert torch.get_num_threads() == before  # no pipeline chain: the threads a command was given stay
        cores.follow(lambda: share[0])
        assert torch.get_num_threads() == 1
        share[0] = 2  # the other chain finished
        cores.rebalance()
        assert torch.get_num_threads() == 2

        def parent_gone():
            raise ConnectionRefusedError

        cores.follow(parent_gone)
        assert torch.get_num_threads() == 2
    finally:
        cores._share = None
        torch.set_num_threads(before)


def test_report_says_when_the_quant_finetune_guard_gave_up():
    from mobilereid.report import pipeline_markdown

    metrics = {"rank1": 0.2, "mAP": 0.16}
    guard = {
        "active": True,
        "max_map_drop": 0.005,
        "every": 8,
        "kept_epoch": 0,
        "give_up_drop": 0.025,
        "gave_up_epoch": 8,
        "checks": [{"epoch": 8, "mAP": 0.1122, "passed": False}],
    }
    final = {
        "workdir": "w",
        "wall_seconds": 60.0,
        "evaluations": {},
        "stages": {
            "quant_finetune_sclnet": {
                "before": metrics,
                "after": metrics,
                "guard": guard,
                "history": [{"epoch": 8, "embedding_cosine": 0.98}],
            }
        },
    }
    text = pipeline_markdown(final)
    assert (
        "stopped after epoch 8, more than 2.50 points down; kept the weights of epoch 0 "
        "(mAP after each check: 8: 11.22)" in text
    )
    guard.update(
        gave_up_epoch=None,
        checks=[{"epoch": 8, "mAP": 0.1122, "passed": False}, {"epoch": 24, "mAP": 0.15, "passed": False}],
    )
    assert "the last epoch failed it; kept the weights of epoch 0" in pipeline_markdown(final)
