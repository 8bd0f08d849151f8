"""``regtune search`` as a user runs it (subprocesses, real Ray/Optuna/MLflow): Ctrl-C and
--resume, promotion and the hand-over to ``regtune train``, fail-fast refusals, a study
whose every trial errors, two studies started at once, and flags that would do nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from regtune.search.outcome import OPTUNA_STATE

from ..helpers import NO_AUG

BASE = {
    "model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 0,
    "data.downsample": 2, "data.val_subjects": 3, "data.val_pairs": 2, "data.test_subjects": 2, "data.test_pairs": 2,
    "train.epochs": 4, "train.steps_per_epoch": 15, "train.batch_size": 2, "loss.dice_weight": 0.0,
    **NO_AUG,  # these tiny trials train a few dozen steps on the phantoms
}


def space(path: Path, name: str, **over) -> Path:
    doc = {"name": name, "base": dict(BASE),
           "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
           "objective": {"metric": "val_loss", "mode": "min"},
           "budget": {"num_samples": 4, "max_concurrent": 2, "grace_period": 4, "reduction_factor": 2},
           "resources": {"cpu": 1, "gpu": 0}}
    for k, v in over.items():
        doc[k] = v
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def regtune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regtune", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def agree(runs: Path, name: str, stdout: str) -> dict[str, str]:
    """Optuna, MLflow and the printed table agree on every trial's status and score."""
    from mlflow.tracking import MlflowClient

    from regtune.search.searcher import optuna_rows

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(name)
    trials = {r.data.tags["regtune.trial_id"]: r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("regtune.kind") == "trial" and r.data.tags.get("regtune.orphan") != "true"}
    orows = optuna_rows(f"sqlite:///{(runs / 'studies' / name / 'optuna.db').resolve()}", name)
    assert set(trials) == set(orows), (sorted(trials), sorted(orows))
    table = {ln.split()[0]: ln.split()[1] for ln in stdout.splitlines() if ln.split() and ln.split()[0] in trials}
    out = {}
    for tid, run in trials.items():
        st = run.data.tags["regtune.status"]
        assert orows[tid]["status"] == st and orows[tid]["state"] == OPTUNA_STATE[st] and table[tid] == st, (tid, st, orows[tid])
        if orows[tid]["value"] is not None:
            assert orows[tid]["value"] == pytest.approx(run.data.metrics["best_score"])
        out[tid] = st
    return out


def test_ctrl_c_then_resume_then_promote_then_train_from_study(synth_dir, tmp_path):
    # the promoted trial takes both CPUs the two search trials shared (promote.cpu) and a
    # lever of its own (promote.set), so it is retrained from scratch
    sp = space(tmp_path / "s.yaml", "sig", promote={"top_k": 1, "epochs": 5, "cpu": 2, "set": {"aug.flip": 0.5}})
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "regtune", "search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = runs / "studies" / "sig" / "mlflow.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        # interrupt once a trial has finished *and* a later one is running: the first two
        # trials can finish together, and a Ctrl-C between trials interrupts none
        st = json.loads(state.read_text()) if state.is_file() else {}
        if st.get("finished") and set(st.get("trials", {})) - set(st["finished"]):
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("resume with: "))
    assert "--resume" in line and "Tuner.restore" not in out + err
    first = agree(runs, "sig", out)
    assert "interrupted" in first.values(), first
    # --num-samples that differs from the study's is refused on --resume, not ignored
    bad = regtune("search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", str(runs), "--resume",
                  "--num-samples", "9", cwd=tmp_path)
    assert bad.returncode == 2 and "--num-samples 9 on --resume" in bad.stderr.strip().splitlines()[-1] and "Traceback" not in bad.stderr
    argv = line[len("resume with: "):].split()
    assert argv[0] == "regtune"
    resumed = subprocess.run([sys.executable, "-m", "regtune", *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = agree(runs, "sig", resumed.stdout)
    assert set(first) <= set(after) and "interrupted" not in after.values() and len(after) == 4
    # promotion of the finished study, then the hand-over
    promoted = regtune("search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", str(runs), "--resume", "--promote",
                       cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    model = json.loads((runs / "studies" / "sig" / "test_scores.json").read_text())
    assert model["promoted"] and model["promoted_from"] in after and "the study's model: promoted trial" in promoted.stdout
    assert "(2 CPU, 0 GPU each)" in promoted.stdout, promoted.stdout[-2000:]
    assert "retrained, not continued: promote.set changes aug.flip" in promoted.stdout, promoted.stdout[-2000:]
    # best_config.yaml is the config of the checkpoint that is the model: the retrained
    # trial's (2 threads, the full 5 epochs, promote.set's lever)
    best_cfg = yaml.safe_load((runs / "studies" / "sig" / "best_config.yaml").read_text())
    assert (best_cfg["train"]["threads"], best_cfg["train"]["epochs"], best_cfg["aug"]["flip"]) == (2, 5, 0.5), best_cfg
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    run = client.get_run(model["run_id"])
    assert run.data.tags["regtune.kind"] == "promoted" and run.data.tags["mlflow.parentRunId"] == model_parent(runs)
    again = regtune("train", "--from-study", "sig", "--runs-dir", str(runs), "--out", str(tmp_path / "again"), "--quiet",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    from regtune.checkpoint import load_checkpoint
    from regtune.data.dataset import load_folder
    from regtune.evaluate import evaluate_pairs, summarise

    ck = load_checkpoint(tmp_path / "again" / "best.pt")
    vols = load_folder(synth_dir, ck.config.data)
    pairs = [(vols.index(f), vols.index(m)) for f, m in ck.extra["test_pairs"]]
    dice = summarise(evaluate_pairs(ck.model(), vols, pairs, ck.config.data.downsample))["dice"]
    assert abs(dice - model["test"]["dice"]) <= 0.01


def model_parent(runs: Path) -> str:
    return json.loads((runs / "studies" / "sig" / "mlflow.json").read_text())["parent_run_id"]


def test_two_studies_started_at_once_in_a_fresh_folder(synth_dir, tmp_path):
    procs = []
    for name in ("twin-a", "twin-b"):
        sp = space(tmp_path / f"{name}.yaml", name, base={**BASE, "train.epochs": 1, "train.steps_per_epoch": 3},
                   budget={"num_samples": 1, "max_concurrent": 1, "grace_period": 1, "reduction_factor": 2})
        procs.append(subprocess.Popen([sys.executable, "-m", "regtune", "search", "--space", str(sp), "--data", str(synth_dir),
                                       "--runs-dir", "runs", "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err


def test_every_trial_failing_exits_non_zero_with_the_first_error_in_one_line(synth_dir, tmp_path):
    # the core accepts the reference setting (2 test subjects), so the study starts; both trials ask for a
    # split the 8 subjects cannot give (6 test + 3 val) and fail the same way
    sp = space(tmp_path / "e.yaml", "errs", params={"data.test_subjects": {"type": "categorical", "choices": [2, 6]}},
               base={k: v for k, v in BASE.items() if k != "data.test_subjects"} | {"train.epochs": 1},
               budget={"num_samples": 2, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2},
               start=[{"data.test_subjects": 6}, {"data.test_subjects": 6}])
    r = regtune("search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", "runs", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    errs = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() and "all 2 trials failed" in ln]
    assert len(errs) == 1 and "DataError" in errs[0] and "test_subjects=6" in errs[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout


def test_settings_the_core_rejects_are_refused_before_ray_starts(synth_dir, tmp_path):
    sp = space(tmp_path / "f.yaml", "fast", base={**BASE, "data.val_subjects": 7})
    t0 = time.monotonic()
    r = regtune("search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", "runs", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert "every trial would fail" in lines[-1] and "data.val_subjects=7" in lines[-1]
    assert not (tmp_path / "runs" / "studies" / "fast" / "ray").exists() and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 120


@pytest.mark.parametrize("args, flag", [
    (["register", "--checkpoint", "x.pt", "--data", "D", "--pairs", "p.csv", "--images", "I", "--out", "o"], "--data"),
    (["evaluate", "--checkpoint", "x.pt", "--study", "s"], "--study"),
    (["evaluate", "--checkpoint", "x.pt", "--export-fields", "f"], "--export-fields"),
    (["evaluate", "--top", "2", "--checkpoint", "x.pt"], "--checkpoint"),
    (["train", "--trial", "abc"], "--trial ID needs --from-study"),
])
def test_flags_that_would_do_nothing_are_refused(args, flag, capsys):
    from regtune.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_trials_asking_for_a_gpu_never_fall_back_to_the_cpu():
    from regtune.errors import RegtuneError
    from regtune.search.trainable import trial_device

    assert trial_device(0).type == "cpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; test_gpu_trials_run_on_the_gpu_ray_assigned checks the GPU path")
    with pytest.raises(RegtuneError, match="sees no CUDA device"):
        trial_device(0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU trials are checked where one is present")
def test_gpu_trials_run_on_the_gpu_ray_assigned(synth_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    sp = space(tmp_path / "g.yaml", "gpu", base={**BASE, "train.epochs": 1},
               budget={"num_samples": 2, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2})
    r = regtune("search", "--space", str(sp), "--data", str(synth_dir), "--runs-dir", "runs", "--gpus-per-trial", "0.5",
                "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("gpu")
    trials = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("regtune.kind") == "trial"]
    assert len(trials) == 2 and all(x.data.tags["regtune.device"].startswith("cuda") for x in trials)
    parent = next(x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("regtune.kind") == "study")
    assert parent.data.params["gpu_per_trial"] == "0.5"
