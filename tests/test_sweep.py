"""toughen sweep: the grid multiplies each recipe only by its own parameters, and an interrupted
sweep resumes without training a finished point again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toughen.errors import ToughenUsageError
from toughen.sweep import parse_grid, plan, run_sweep


def test_recipe_parameters_apply_only_to_their_recipe():
    # plan() works on a parsed grid; TrainConfig gains beta with the trades recipe
    grid = {"recipe": ["standard", "mix", "trades"], "lam": [0.5, 1.0, 2.0], "beta": [1.0, 6.0], "eps": [0.1, 8 / 255]}
    points = plan(grid, {})
    by_recipe = {r: [p["values"] for p in points if p["values"]["recipe"] == r] for r in ("standard", "mix", "trades")}
    assert len(by_recipe["standard"]) == 2 and all("lam" not in v and "beta" not in v for v in by_recipe["standard"])
    assert len(by_recipe["mix"]) == 3 * 2 and all("beta" not in v for v in by_recipe["mix"])
    assert len(by_recipe["trades"]) == 2 * 2 and all("lam" not in v for v in by_recipe["trades"])
    assert len({p["name"] for p in points}) == len(points) == 12


def test_grid_values_are_parsed_by_field_type():
    grid = parse_grid("recipe=standard,mix lam=1,0.5 eps=0.1,8/255,0.10 epochs=2")
    assert grid == {"recipe": ["standard", "mix"], "lam": [1.0, 0.5], "eps": [0.1, 8 / 255], "epochs": [2]}
    assert isinstance(grid["lam"][0], float) and isinstance(grid["epochs"][0], int)


@pytest.mark.parametrize("grid, message", [
    ("recipe=pgd lam=0.5,1", "lam applies only to the recipe"),
    ("recipe=mix colour=red", "unknown key 'colour'"),
    ("eps=0.1 eps=0.2", "given twice"),
    ("eps", "not KEY=V1,V2"),
    ("epochs=two", "takes numbers"),
])
def test_bad_grids_are_refused_before_anything_runs(grid, message, tmp_path):
    with pytest.raises(ToughenUsageError, match=message):
        run_sweep(grid, {"data": "digits"}, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_value_in_both_grid_and_options_is_refused(tmp_path):
    with pytest.raises(ToughenUsageError, match="both in --grid and as an option"):
        run_sweep("eps=0.1,0.2", {"eps": 0.3}, tmp_path / "s")


SWEEP = ["sweep", "--grid", "recipe=standard,mix lam=0.5,1", "--data", "digits", "--model", "mlp", "--epochs", "3",
         "--steps", "1", "--eval-steps", "1", "--eps", "0.1", "--json"]


def test_killed_sweep_resumes_and_every_run_is_present_once(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "toughen", *SWEEP, "--no-report", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/summary.json")):  # kill as soon as the first point has finished
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep finished no point in 120 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = {p.parent.name: p.read_bytes() for p in out.glob("*/summary.json")}
    mtimes = {name: (out / name / "summary.json").stat().st_mtime_ns for name in done_before}
    points = [p["name"] for p in json.loads((out / "sweep.json").read_text())["points"]]
    assert len(points) == 3 and 1 <= len(done_before) < 3, f"killed too late to test resuming: {done_before}"

    resumed = subprocess.run([sys.executable, "-m", "toughen", *SWEEP, "--out", str(out)], capture_output=True,
                             text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads(resumed.stdout)
    assert [r["run"] for r in rows] == points
    assert {r["run"]: r["status"] for r in rows} == {p: "kept" if p in done_before else "trained" for p in points}
    # every point once: one directory each, nothing left over, finished points untouched
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(points)
    for name in points:
        metrics = (out / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3], name
    for name, content in done_before.items():
        assert (out / name / "summary.json").read_bytes() == content
        assert (out / name / "summary.json").stat().st_mtime_ns == mtimes[name]
    page = (out / "report.html").read_text()
    for name in points:
        assert page.count(f"<tr>\n<td>{name}") == 1, name

    with pytest.raises(ToughenUsageError, match="holds a different sweep"):
        run_sweep("recipe=standard eps=0.2", {"data": "digits"}, out)
