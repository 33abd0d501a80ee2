"""`toughen train` and `toughen eval` under torchrun: 2 processes (gloo, CPU) train like 1 process
with the same global batch, write one set of files, resume exactly, and evaluate like 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from toughen.errors import ToughenUsageError
from toughen.runs import read_config
from toughen.train import TIMING_FIELDS, TrainConfig, train
from toughen.runtime import SINGLE, Dist, from_env

# PGD training on digits: small enough that most of each torchrun launch is process start-up.
# A constant lr makes epoch 1 of a 1-epoch run the same as epoch 1 of a 2-epoch run (the resume test).
CFG = dict(data="digits", model="small_cnn", recipe="pgd", eps=0.1, steps=2, epochs=2, batch_size=64, lr=2e-3,
           lr_schedule="constant", val_attack_steps=2, eval_steps=3, seed=0,
           amp=None, channels_last=False)  # not "auto": the two runs would each time their own
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Same global batches and gradients; what differs is each rank's own attack random starts (and
# the order of floating-point sums), so the two runs drift apart a little within two epochs.
TOLERANCE = 0.05  # absolute, on accuracies in [0, 1]; relative on the loss


def _start_torchrun(tmp_path: Path, *args: str) -> subprocess.Popen:
    """torchrun --standalone --nproc-per-node 2 ARGS in ``tmp_path``, one intra-op thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


# Interrupt and resume in one torchrun launch (process start-up is most of a launch's cost):
# train 1 epoch, then make the run a 2-epoch one that stopped after epoch 1 (with a constant lr,
# epoch 1 is the same either way), then `toughen train --resume`, then `toughen eval`, all
# through the CLI.
RESUME_DRIVER = """
import sys, torch.distributed as td, yaml
from pathlib import Path
from toughen.cli import app

app(["train", "--config", "cfg.yaml", "--epochs", "1", "--out", "part", "--json"], standalone_mode=False)
if td.get_rank() == 0:
    config = yaml.safe_load(Path("part/config.yaml").read_text())
    config["train"]["epochs"] = 2
    Path("part/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    Path("part/summary.json").unlink()
td.barrier()
app(["train", "--resume", "part", "--json"], standalone_mode=False)
# evaluation under torchrun: one attack, and a suite with a robustness curve
app(["eval", "part", "--n", "120", "--steps", "5", "--json"], standalone_mode=False)
app(["eval", "part", "--suite", "quick", "--eps-sweep", "0.05,0.1", "--n", "40", "--json"], standalone_mode=False)
"""


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A single-process run in this process; a 2-process run under torchrun; and a 2-process run
    interrupted, resumed and evaluated under torchrun (RESUME_DRIVER)."""
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    (tmp / "resume").mkdir()
    (tmp / "resume" / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    (tmp / "resume" / "driver.py").write_text(RESUME_DRIVER)
    # The three runs are independent: run them at once, so the cores are never idle.
    ddp = _start_torchrun(tmp, "-m", "toughen", "train", "--config", "cfg.yaml", "--out", "ddp", "--json")
    resumed = _start_torchrun(tmp / "resume", "driver.py")
    torch.manual_seed(0)
    train(TrainConfig(**CFG), tmp / "single", progress=False)
    stdout = _finish(ddp)
    assert len(stdout.strip().splitlines()) == 1  # rank 0 printed the summary; rank 1 nothing
    _finish(resumed)
    return tmp


def test_two_processes_match_one_with_the_same_global_batch(runs):
    single, ddp = _rows(runs / "single"), _rows(runs / "ddp")
    assert len(single) == len(ddp) == 2  # rank 1 wrote no rows of its own
    for a, b in zip(single, ddp):
        assert a["epoch"] == b["epoch"]
        for key in ("val_clean_accuracy", "val_robust_accuracy", "train_robust_accuracy"):
            assert abs(a[key] - b[key]) <= TOLERANCE, (key, a[key], b[key])
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE * a["loss"]
        # the pass counts are the whole job's: the same work as one process
        assert a["forward_passes"] == b["forward_passes"] and a["cost_multiplier"] == b["cost_multiplier"]
    s1 = json.loads((runs / "single" / "summary.json").read_text())
    s2 = json.loads((runs / "ddp" / "summary.json").read_text())
    assert s2["n_test"] == s1["n_test"] == 360 and s2["world_size"] == 2
    assert abs(s1["clean_accuracy"] - s2["clean_accuracy"]) <= TOLERANCE
    assert abs(s1["robust_accuracy"] - s2["robust_accuracy"]) <= TOLERANCE


def test_only_one_set_of_files_is_written(runs):
    names = sorted(p.name for p in (runs / "ddp").iterdir())
    assert names == sorted(p.name for p in (runs / "single").iterdir())
    assert read_config(runs / "ddp")["world_size"] == 2
    assert sorted(p.name for p in runs.iterdir()) == ["cfg.yaml", "ddp", "resume", "single"]  # no stray files


def test_resume_under_torchrun_continues_exactly(runs):
    """Interrupted after epoch 1 and resumed under torchrun (RESUME_DRIVER), the run ends with the
    uninterrupted 2-process run's metrics and weights, bit for bit (each rank's attack generator
    included)."""
    part = runs / "resume" / "part"
    assert _without_timing(_rows(part)) == _without_timing(_rows(runs / "ddp"))
    from safetensors.torch import load_file

    a, b = load_file(part / "model.safetensors"), load_file(runs / "ddp" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "summary.json").read_text())["resumed"] is True


def test_sharding_and_environment(monkeypatch):
    idx = torch.arange(13)
    shards = [Dist(r, 3).shard(idx) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(13))
    assert [len(s) for s in shards] == [5, 4, 4]
    assert SINGLE.shard(idx) is idx and SINGLE.sum([1, 2.5]) == [1.0, 2.5]
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert from_env() == SINGLE
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    with pytest.raises(ToughenUsageError, match="RANK=6"):
        from_env()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert from_env() == Dist(2, 4, 0) and not from_env().is_main


def test_eval_under_torchrun_agrees_with_one_process(runs):
    """`toughen eval` on 2 processes: one row per evaluation in evaluations.jsonl, all n examples,
    clean accuracy exactly that of one process, robust accuracy within the tolerance (each rank
    draws its own random starts), the suite's cumulative worst case never above a single attack."""
    from toughen.evaluation.run_eval import evaluate_run

    rows = [json.loads(line) for line in (runs / "resume" / "part" / "evaluations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and [r["n"] for r in rows] == [120, 40]
    one, suite = rows
    # the same weights as the uninterrupted run: evaluate that one in this process
    ref = evaluate_run(runs / "ddp", attack="pgd", steps=5, n=120)
    assert abs(one["clean_accuracy"] - ref["clean_accuracy"]) < 1e-6  # the same examples, no randomness
    assert abs(one["robust_accuracy"] - ref["robust_accuracy"]) <= TOLERANCE
    # the suite: clean accuracy of the first 40 examples, exactly; the worst case can only fall
    import toughen
    from toughen.data import load_data

    test = load_data("digits")
    with torch.no_grad():
        clean_40 = (toughen.load(runs / "ddp")(test.x_test[:40]).argmax(1) == test.y_test[:40]).float().mean().item()
    assert abs(suite["clean_accuracy"] - clean_40) < 1e-6
    assert suite["robust_accuracy"] <= suite["clean_accuracy"]
    accs = [a["robust_accuracy"] for a in suite["per_attack"]]
    assert accs == sorted(accs, reverse=True) and abs(accs[-1] - suite["robust_accuracy"]) < 1e-9
    assert [c["eps"] for c in suite["curve"]] == [0.05, 0.1]
    assert suite["curve"][0]["robust_accuracy"] >= suite["curve"][1]["robust_accuracy"]



# free carries a perturbation of its own shard on each rank from batch to batch: a resume must
# give every rank back its own, not rank 0's.
FREE_CFG = {**CFG, "recipe": "free", "free_replays": 2, "guard": False, "eval_steps": 0}


@pytest.fixture(scope="module")
def free_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_free")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(FREE_CFG))
    (tmp / "resume").mkdir()
    (tmp / "resume" / "cfg.yaml").write_text(yaml.safe_dump(FREE_CFG))
    (tmp / "resume" / "driver.py").write_text(RESUME_DRIVER.split("# evaluation under torchrun")[0])
    ddp = _start_torchrun(tmp, "-m", "toughen", "train", "--config", "cfg.yaml", "--out", "ddp", "--json")
    resumed = _start_torchrun(tmp / "resume", "driver.py")
    _finish(ddp)
    _finish(resumed)
    return tmp


def test_free_resumes_under_torchrun_with_each_ranks_own_perturbation(free_runs):
    from safetensors.torch import load_file

    part = free_runs / "resume" / "part"
    assert _without_timing(_rows(part)) == _without_timing(_rows(free_runs / "ddp"))
    a, b = load_file(part / "model_last.safetensors"), load_file(free_runs / "ddp" / "model_last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
