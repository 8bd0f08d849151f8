"""The inference-time search over an amortised network's weights, through Optuna and MLflow
(the session's briefly trained conditional network on the phantoms)."""

from __future__ import annotations

import math

import pytest

from regtune.checkpoint import load_checkpoint
from regtune.config import Config


def test_weight_search_end_to_end_with_optuna_and_mlflow(film_run, vols, tmp_path):
    from mlflow.tracking import MlflowClient

    from regtune.search import weight_outputs as wo
    from regtune.search import weight_search as ws

    ck = load_checkpoint(film_run / "best.pt")
    val = [(vols.index(f), vols.index(m)) for f, m in ck.extra["val_pairs"]]
    test = [(vols.index(f), vols.index(m)) for f, m in ck.extra["test_pairs"]]
    # the search's batched fast path scores exactly as the ordinary evaluation does
    scorer = ws.WeightScorer(ck.model(), ck.config, vols, batch=3)
    settings = [{"loss.reg_weight": v} for v in (0.1, 2.0, 100.0)]
    for fast, v in zip(scorer.many(settings, val), settings):
        slow = scorer(v, val)
        assert all(fast[k] == pytest.approx(slow[k], abs=1e-9) for k in ("dice", "sdlogj", "folding_pct"))
    st = ws.SearchSettings(n=12, pairs=1, per_round=4, refine=2, max_folding_pct=None, max_sdlogj=1e6)
    res = ws.search_weights(ck.model(), ck.config, vols, val, st, test_pairs=test)
    xs = [p.values["loss.reg_weight"] for p in res.points]
    assert len(xs) == 12 and min(xs) == pytest.approx(0.1) and max(xs) == pytest.approx(100.0)  # the grid spans the range
    assert all(0.1 - 1e-9 <= x <= 100 + 1e-9 for x in xs) and len(res.search_pairs) == 1
    assert len(res.refined) == 2 and all(p.pairs == len(val) for p in res.refined)
    assert res.chosen in res.refined and res.chosen.score == max(p.score for p in res.refined)
    assert math.isfinite(res.chosen.metrics["hd95"]) and res.test_pairs == len(test) and 0 <= res.test["dice"] <= 1
    # an impossible constraint: reported, and the setting that breaks it least is chosen: here the smoothest, not the
    # best-scoring one among those that do not fold (every setting of the phantoms' net is fold-free)
    strict = ws.search_weights(ck.model(), ck.config, vols, val,
                               ws.SearchSettings(n=8, pairs=1, refine=2, max_folding_pct=0.05, max_sdlogj=0.0))
    assert not strict.any_feasible and not strict.chosen.feasible
    by_sd = sorted(strict.points, key=lambda p: p.metrics["sdlogj"])
    assert {p.trial for p in strict.refined} == {p.trial for p in by_sd[:2]}
    assert strict.chosen.metrics["sdlogj"] == min(p.metrics["sdlogj"] for p in strict.refined)
    assert strict.chosen.values["loss.reg_weight"] == max(p.values["loss.reg_weight"] for p in strict.refined)
    assert wo.tradeoff_png(tmp_path / "strict.png", strict).stat().st_size > 0  # drawn with no feasible setting too

    paths = wo.write_outputs(tmp_path / "ws", res, ck.model(), ck.config, vols, checkpoint="ck")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    chosen = Config.load(paths["config"])
    assert chosen.amortise.ranges == () and chosen.loss.reg_weight == pytest.approx(res.chosen.values["loss.reg_weight"], rel=1e-6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = wo.track(res, uri, checkpoint="ck", artifacts=paths)
    client = MlflowClient(uri)
    run = client.get_run(rid)
    assert run.data.tags["regtune.kind"] == "weight_search" and run.info.status == "FINISHED"
    assert float(run.data.params["chosen.loss.reg_weight"]) == pytest.approx(res.chosen.values["loss.reg_weight"], rel=1e-4)
    curve = client.get_metric_history(rid, "curve_lambda.loss.reg_weight")
    assert len(curve) == 12 and [m.value for m in sorted(curve, key=lambda m: m.step)] == sorted(xs)
    assert len(client.get_metric_history(rid, "curve_dice")) == 12 and "chosen_test_dice" in run.data.metrics
    assert {a.path for a in client.list_artifacts(rid)} >= {"curve.png", "tradeoff.png", "overlays.png", "points.csv", "chosen.yaml"}


def test_a_search_matched_to_a_reference_is_no_rougher_and_reports_the_paired_difference(film_run, vols, tmp_path):
    from regtune.checkpoint import save_at_weights
    from regtune.search import weight_search as ws
    from regtune.search.weight_match import load_reference, matched_settings

    ck = load_checkpoint(film_run / "best.pt")
    val = [(vols.index(f), vols.index(m)) for f, m in ck.extra["val_pairs"]]
    test = [(vols.index(f), vols.index(m)) for f, m in ck.extra["test_pairs"]]
    # the reference: the same network fixed at reg_weight 1 (a checkpoint of the same split, as an ordinary one would be)
    ref_pt = save_at_weights(tmp_path / "ref.pt", ck, {"loss.reg_weight": 1.0})
    scorer = ws.WeightScorer(ck.model(), ck.config, vols)
    at_1 = scorer({"loss.reg_weight": 1.0}, val, with_hd95=True)
    ref = load_reference(ref_pt, ck, vols, val)
    assert all(ref.val[k] == pytest.approx(at_1[k], rel=1e-6, abs=1e-9) for k in ("dice", "hd95", "sdlogj", "folding_pct"))
    st = matched_settings(ws.SearchSettings(n=12, pairs=1, per_round=4, refine=3), ref)
    assert (st.max_sdlogj, st.max_sdlogj_l2r, st.max_folding_pct) == (ref.val["sdlogj"], ref.val["sdlogj_l2r"], ref.val["folding_pct"])
    assert at_1["sdlogj"] > 0 and at_1["sdlogj_l2r"] > 0
    assert matched_settings(st, ref, roughness="l2r").max_sdlogj is None
    res = ws.search_weights(ck.model(), ck.config, vols, val, st, test_pairs=test, reference=ref)
    # feasible on all validation pairs: no rougher than the reference there on either definition (the weights above 1
    # are smoother)
    assert res.chosen.feasible and res.chosen.metrics["sdlogj"] <= ref.val["sdlogj"]
    assert res.chosen.metrics["sdlogj_l2r"] <= ref.val["sdlogj_l2r"] and "SDlogJ (L2R) <=" in st.describe()
    d = res.reference["test_dice_diff"]
    at_1_test = scorer({"loss.reg_weight": 1.0}, test)
    assert res.reference["test"]["dice"] == pytest.approx(at_1_test["dice"], abs=1e-9) and d["n"] == len(test)
    assert d["diff"] == pytest.approx(res.test["dice"] - at_1_test["dice"], abs=1e-9)
    assert res.summary()["reference"]["checkpoint"] == str(ref_pt)
    # drawn against the curve on the curve's own pairs
    assert res.reference["search"]["dice"] == pytest.approx(scorer({"loss.reg_weight": 1.0}, res.search_pairs)["dice"], abs=1e-9)
    from regtune.search import weight_outputs as wo

    paths = wo.write_outputs(tmp_path / "ws", res, ck.model(), ck.config, vols, checkpoint="ck")
    assert paths["tradeoff"].stat().st_size > 0 and paths["curve"].stat().st_size > 0


def test_each_roughness_constraint_is_its_own_optuna_constraint():
    from regtune.search.weight_results import SearchSettings

    m = {"folding_pct": 0.2, "sdlogj": 1.0, "sdlogj_l2r": 0.3}
    c = SearchSettings(max_folding_pct=0.5, max_sdlogj=0.8, max_sdlogj_l2r=0.1).constraints(m)
    assert c == pytest.approx({"folding_pct": -0.3, "sdlogj": 0.2, "sdlogj_l2r": 0.2})  # > 0: broken
    assert SearchSettings(max_folding_pct=None).constraints(m) == {}
    # how far a setting breaks them, each excess relative to its limit (the fallback when none is feasible)
    assert SearchSettings(max_folding_pct=0.5, max_sdlogj=0.8, max_sdlogj_l2r=0.1).violation(m) == pytest.approx(0.25 + 2.0)
    assert SearchSettings(max_folding_pct=0.5).violation(m) == 0.0
    with pytest.raises(Exception, match="--max-sdlogj-l2r -1"):
        SearchSettings(max_sdlogj_l2r=-1)
