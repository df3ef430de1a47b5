"""quant-sensitivity --max-map-drop: candidates scored by retrieval on two halves of the identities (its own file, so
that it runs beside the long test_quant_sensitivity.py)."""


def test_map_budget_chooses_by_retrieval_and_keeps_the_cosine_choice_beside_it(sclnet_ckpt, tiny_dataset, tmp_path):
    """--max-map-drop: every candidate scored by mAP on both halves of the identities; layers re-ranked on the worst
    queries and reverted greedily; the choice is the fastest within the mAP budget, the cosine choice beside it."""
    from mobilereid.export.sensitivity import run_sensitivity

    report = run_sensitivity(
        sclnet_ckpt, tiny_dataset, tmp_path / "m", repeats=5, ks=(1, 2), executorch=False, max_map_drop=0.0
    )
    cands = report["candidates"]
    assert all({"search", "held_out"} <= set(c["retrieval"]) for c in cands if "error" not in c)
    fp32 = next(c for c in cands if c["name"] == "fp32")
    assert abs(fp32["retrieval"]["search"]["delta_map"]) < 0.05  # the float model in another runtime
    greedy = [c for c in cands if "on the worst queries" in c["name"]]
    assert greedy and all(c["retrieval"]["search"]["delta_map"] > 0 for c in greedy[:-1])  # stops at the first fit
    within = [c for c in cands if "error" not in c and c["retrieval"]["search"]["delta_map"] <= 0.0]
    assert report["chosen"] == (min(within, key=lambda c: c["p50_ms"]) if within else None)
    assert report["candidates_tried"] == len(cands)
    assert "by_cosine" in report and "Choice by retrieval" in (tmp_path / "m" / "sensitivity.md").read_text()


def test_map_budget_refuses_a_negative_budget_and_a_folder_without_query(sclnet_ckpt, tmp_path):
    from typer.testing import CliRunner

    from mobilereid.cli import app

    result = CliRunner().invoke(
        app, ["quant-sensitivity", str(sclnet_ckpt), "--calib", str(tmp_path), "--max-map-drop", "-1"]
    )
    assert result.exit_code == 2
