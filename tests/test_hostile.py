"""Hostile input and faults, one row per class of the probe that found them: each command exits
with the expected code and a one-line message (no traceback), no code from a file runs, and the
files of the run it touched are unchanged.

Each case gets its own copy of one small trained run (mlp on digits, about a second to train).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli
from toughen.runs import RUN_FILES, RunLock, append_jsonl, read_jsonl
from toughen.train import TrainConfig, train


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    run = tmp_path_factory.mktemp("pristine") / "run"
    train(TrainConfig(data="digits", model="mlp", recipe="pgd", eps=0.1, epochs=1, steps=1, eval_steps=1,
                      val_attack_steps=1, amp=None, channels_last=False), run, progress=False)
    (run / "audit.json").write_text('{"verdict": "pass"}')  # an old model's audit, which --overwrite must remove
    return run


@pytest.fixture()
def run(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def _cifar_that_runs_code(tmp: Path) -> Path:
    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(tmp / 'pwned')!r}, 'w').write('ran')",)

    data = tmp / "cifar"
    data.mkdir()
    good = {b"data": np.zeros((20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (data / name).write_bytes(pickle.dumps({**good, b"x": RunsCode()} if name == "test_batch" else good))
    (data / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return data


def _image_folder(tmp: Path, per_class: dict[str, int], bad: bytes | None = None) -> str:
    """An image folder of 8x8 PNGs, ``per_class[name]`` images each; with ``bad``, one more file
    ``bad.png`` in the first class holding those bytes (empty, or not an image)."""
    from PIL import Image

    root = tmp / "images"
    rng = np.random.default_rng(0)
    for name, n in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if bad is not None:
        (root / next(iter(per_class)) / "bad.png").write_bytes(bad)
    return str(root)


def _train_on_images(per_class: dict[str, int], bad: bytes | None = None):
    return lambda run, tmp: ["train", "--data", "imagefolder", "--data-dir", _image_folder(tmp, per_class, bad),
                             "--model", "mlp", "--epochs", "1", "--out", str(tmp / "new")]


def _config(tmp: Path, content) -> str:
    path = tmp / "cfg.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


# (id, command with RUN / TMP placeholders or a callable (run, tmp) -> command, exit code, message fragment,
#  whether the run's files must be unchanged)
CASES = [
    ("lr-nan-overwrite", ["train", "--data", "digits", "--lr", "nan", "--overwrite", "--out", "RUN"], 2,
     "lr must be a number > 0, got nan", True),
    ("weight-decay-negative", ["train", "--data", "digits", "--weight-decay", "-5", "--overwrite", "--out", "RUN"], 2,
     "weight_decay must be a number >= 0", True),
    ("val-size-nan", ["train", "--data", "digits", "--val-size", "nan", "--overwrite", "--out", "RUN"], 2,
     "val_size must be a number > 0", True),
    ("epochs-absurd", ["train", "--data", "digits", "--epochs", "100000000", "--overwrite", "--out", "RUN"], 2,
     "epochs must be a whole number >= 1 and <= 100000", True),
    ("config-wrong-type", lambda run, tmp: ["train", "--config", _config(tmp, {"epochs": "ten"}), "--overwrite",
                                            "--out", str(run)], 2, "epochs must be a whole number", True),
    ("config-a-list", lambda run, tmp: ["train", "--config", _config(tmp, "- 1\n- 2\n"), "--overwrite",
                                        "--out", str(run)], 2, "a config is a mapping", True),
    ("config-bad-yaml", lambda run, tmp: ["train", "--config", _config(tmp, "epochs: [1,\n"), "--out", str(tmp / "new")],
     2, "is not valid YAML", True),
    ("config-flag-a-list", lambda run, tmp: ["train", "--config", _config(tmp, {"normalize": [1]}), "--overwrite",
                                             "--out", str(run)], 2, "normalize is true or false", True),
    ("out-a-file", ["train", "--data", "digits", "--overwrite", "--out", "RUN/summary.json"], 2,
     "exists and is not a directory", True),
    ("report-over-summary", ["report", "RUN", "--out", "RUN/summary.json", "--no-gallery"], 2,
     "is a file of the run", True),
    ("report-out-a-directory", ["report", "RUN", "--out", "RUN", "--no-gallery"], 2, "is a directory", True),
    ("eval-step-size-nan", ["eval", "RUN", "--step-size", "nan", "--steps", "2"], 2, "--step-size must be a number", True),
    ("eval-suite-ignores-steps", ["eval", "RUN", "--suite", "quick", "--steps", "5"], 2,
     "--suite runs each attack at its own budget", True),
    ("audit-negative-queries", ["audit", "RUN", "--queries", "-1", "--n", "20"], 2, "n_queries (--queries) must be", True),
    ("epochs-not-a-whole-number", ["train", "--data", "digits", "--epochs", "1e23", "--overwrite", "--out", "RUN"], 2,
     "Invalid value for '--epochs'", True),
    ("unknown-flag", ["train", "--data", "digits", "--epoch", "3", "--overwrite", "--out", "RUN"], 2,
     "No such option: --epoch", True),
    ("out-empty", ["train", "--data", "digits", "--out", ""], 2, "--out is empty", True),
    ("report-out-empty", ["report", "RUN", "--out", "", "--no-gallery"], 2, "--out is empty", True),
    ("out-name-too-long", lambda run, tmp: ["train", "--data", "digits", "--out", str(tmp / ("a" * 300))], 1,
     "a file name is too long", True),
    ("images-one-class", _train_on_images({"cat": 12}), 2, "a classifier needs examples of at least two", True),
    ("images-a-class-too-small", _train_on_images({"cat": 12, "dog": 1}), 2, "has 1 image(s)", True),
    ("images-zero-byte-png", _train_on_images({"cat": 6, "dog": 6}, b""), 2, "is not a readable image", True),
    ("images-not-an-image", _train_on_images({"cat": 6, "dog": 6}, b"<html>hello</html>"), 2,
     "is not a readable image", True),
    ("cifar-pickle-runs-code", lambda run, tmp: ["train", "--data", "cifar10", "--data-dir", str(_cifar_that_runs_code(tmp)),
                                                 "--out", str(tmp / "new")], 2, "it asks to run builtins.exec", True),
]


@pytest.mark.parametrize("case_id, command, code, message, unchanged", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_harms_nothing(case_id, command, code, message, unchanged, run, tmp_path, capsys):
    before = _digests(run)
    if callable(command):
        args = command(run, tmp_path)
    else:
        args = [a.replace("RUN", str(run)) if "RUN" in a else a for a in command]
    got, stdout, stderr = run_cli(args, capsys)
    assert got == code, (stdout, stderr)
    assert message in " ".join(stderr.split()), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, "one line, no traceback"
    assert not (tmp_path / "pwned").exists(), "code from a data file ran"
    if unchanged:
        assert _digests(run) == before, "the run's files changed"


def test_a_corrupted_model_or_checkpoint_is_a_clear_error(run, capsys):
    (run / "model.safetensors").write_bytes(b"\x00" * 100)
    code, _, stderr = run_cli(["eval", str(run), "--steps", "1", "--n", "10"], capsys)
    assert code == 2 and "corrupted" in stderr and len(stderr.strip().splitlines()) == 1
    (run / "summary.json").unlink()  # an interrupted run, whose checkpoint is garbage
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, stderr = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "corrupted" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_second_writer_is_refused_and_changes_nothing(run, capsys):
    before = _digests(run)
    with RunLock(run):  # another process writing this run, as far as the lock can tell
        code, _, stderr = run_cli(["train", "--data", "digits", "--epochs", "1", "--overwrite", "--out", str(run)],
                                  capsys)
    assert code == 2 and "being written by another toughen process" in stderr
    assert _digests(run) == before


def test_overwrite_removes_every_file_the_old_run_left(run, capsys):
    (run / ".model.safetensors.abc.tmp").write_bytes(b"orphan of a killed write")
    (run / "notes.txt").write_text("mine")
    code, _, _ = run_cli(["train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--steps", "1",
                          "--eval-steps", "1", "--amp", "fp32", "--overwrite", "--out", str(run), "--json"], capsys)
    assert code == 0
    assert not (run / "audit.json").exists(), "the old model's audit would stand for the new one"
    assert not list(run.glob(".*.tmp"))
    assert (run / "notes.txt").read_text() == "mine"
    assert {"audit.json", "checkpoint.pt"} <= set(RUN_FILES)


def test_a_torn_log_line_is_cut_and_later_lines_are_read(tmp_path):
    log = tmp_path / "evaluations.jsonl"
    append_jsonl(log, {"n": 1})
    with log.open("a") as f:
        f.write('{"n": 2, "robust_acc')  # a process killed (or a disk full) mid-line
    append_jsonl(log, {"n": 3})
    assert log.read_text() == '{"n": 1}\n{"n": 3}\n'  # the fragment is gone, nothing glued onto it
    with log.open("a") as f:
        f.write("garbage edited in by hand\n")
    append_jsonl(log, {"n": 4})
    with pytest.warns(UserWarning, match="line 3: not a JSON object"):
        assert [r["n"] for r in read_jsonl(log)] == [1, 3, 4]  # the rows after a bad line are kept


def test_text_that_looks_like_markup_prints_as_text(capsys):
    from toughen.console import print_table

    print_table("run [bold]x[/]", [{"attack": "a [/] b", "robust_accuracy": 0.5}], ("attack", "robust_accuracy"),
                names=("attack",))
    assert "a [/] b" in capsys.readouterr().out


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 2.0)])
def test_attacks_take_empty_and_single_example_batches(norm, eps):
    import torch

    from toughen.attacks import ATTACKS, Attack, list_attacks
    from toughen.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10).eval()
    for name in list_attacks():
        for n in (0, 1):
            x, y = torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,))
            options = {"restarts": 2, "early_stop": True} if name == "pgd" else {}
            x_adv = Attack(name, options)(model, x, y, eps=eps, norm=norm, bounds=(0.0, 1.0), generator=None)
            assert x_adv.shape == x.shape
            assert ATTACKS.get(name)


def test_inputs_outside_the_bounds_and_nan_step_sizes_are_refused():
    import torch

    from toughen.attacks import pgd
    from toughen.errors import ToughenUsageError
    from toughen.models import build_model

    model = build_model("small_cnn", (1, 8, 8), 10).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ToughenUsageError, match=r"inside the data bounds \[0, 1\]"):
        pgd(model, (x - 0.5) / 0.25, y, eps=0.1)  # normalized outside the model
    with pytest.raises(ToughenUsageError, match="step_size must be a number >= 0, got nan"):
        pgd(model, x, y, eps=0.1, step_size=float("nan"))
    with pytest.raises(ToughenUsageError, match="eps must be a finite number"):
        pgd(model, x, y, eps=float("inf"), norm="l2")


def test_batchnorm_statistics_move_only_in_train_mode_as_documented():
    """pgd leaves the model's mode to the caller (documented): in eval mode the running
    statistics are untouched; in train mode every forward pass of the attack updates them."""
    import torch

    from toughen.attacks import pgd
    from toughen.models import build_model

    torch.manual_seed(0)
    model = build_model("preact_resnet18", (3, 8, 8), 10)
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    stats = lambda: [b.clone() for n, b in model.named_buffers() if "running_mean" in n]  # noqa: E731
    before = stats()
    pgd(model.eval(), x, y, eps=0.1, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, stats()))
    pgd(model.train(), x, y, eps=0.1, steps=2)
    assert not all(torch.equal(a, b) for a, b in zip(before, stats()))
    assert model.training


@pytest.mark.parametrize("wrap", [lambda z: (z, z), lambda z: {"logits": z}])
def test_a_model_that_does_not_return_a_logits_tensor_is_refused_clearly(wrap):
    import torch

    import toughen
    from toughen.errors import ToughenUsageError
    from toughen.evaluation import clean_correct
    from toughen.models import build_model

    class Wrapped(torch.nn.Module):  # e.g. a Hugging Face classifier: a ModelOutput, not a tensor
        def __init__(self):
            super().__init__()
            self.net = build_model("small_cnn", (1, 8, 8), 10)

        def forward(self, x):
            return wrap(self.net(x))

    model = Wrapped().eval()
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    calls = [lambda: clean_correct(model, x, y), lambda: toughen.evaluate(model, x, y, suite="quick", eps=0.1),
             lambda: toughen.pgd(model, x, y, eps=0.1, steps=2, amp="auto"),  # the precision probe, too
             lambda: toughen.pgd(model, x, y, eps=0.1, steps=0),  # no step: the last-iterate pass
             lambda: toughen.fgsm(model, x, y, eps=0.1, norm="l2"),
             lambda: toughen.attacks.apgd(model, x, y, eps=0.1, steps=2, loss="dlr"),
             lambda: toughen.attacks.square(model, x, y, eps=0.1, n_queries=2)]
    for call in calls:
        with pytest.raises(ToughenUsageError, match="not a tensor of logits; toughen needs forward"):
            call()


def _fail_writes_under(monkeypatch, directory: Path, error: int, short_write_to: str | None = None):
    """Make ``directory`` behave as if it were on a full (ENOSPC) or read-only (EROFS) file system:
    opening a file there for writing fails with ``error``. With ``short_write_to``, opening works
    but a write to that file lands only its first half (what a full disk does to a long write)."""
    import errno as errno_
    import os

    real_open, real_write = os.open, os.write
    directory = str(directory.resolve())

    def fake_open(path, flags, *args, **kwargs):
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
        if writes and str(Path(path).resolve()).startswith(directory) and short_write_to is None:
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_write(fd, data):
        if short_write_to is not None and os.readlink(f"/proc/self/fd/{fd}").endswith(short_write_to):
            return real_write(fd, bytes(data)[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    assert error in (errno_.ENOSPC, errno_.EROFS)


def test_a_full_disk_leaves_the_evaluation_log_whole(run, capsys, monkeypatch):
    import errno

    record = run / "evaluations.jsonl"
    code, _, _ = run_cli(["eval", str(run), "--steps", "1", "--n", "10", "--amp", "fp32", "--json"], capsys)
    assert code == 0
    before = record.read_bytes()
    _fail_writes_under(monkeypatch, run, errno.ENOSPC, short_write_to="evaluations.jsonl")
    code, _, stderr = run_cli(["eval", str(run), "--steps", "1", "--n", "10", "--amp", "fp32", "--json"], capsys)
    monkeypatch.undo()
    assert code == 1 and "the disk is full" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert record.read_bytes() == before, "the half-written line was not taken back"
    code, _, _ = run_cli(["eval", str(run), "--steps", "1", "--n", "10", "--amp", "fp32", "--json"], capsys)
    assert code == 0 and len(read_jsonl(record)) == 2


def test_a_read_only_output_is_refused_and_harms_nothing(run, capsys, monkeypatch):
    import errno

    before = _digests(run)
    _fail_writes_under(monkeypatch, run, errno.EROFS)
    code, _, stderr = run_cli(["train", "--data", "digits", "--epochs", "1", "--overwrite", "--out", str(run)], capsys)
    assert code == 2 and "cannot write to" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = run_cli(["eval", str(run), "--steps", "1", "--n", "10", "--amp", "fp32", "--json"], capsys)
    assert code == 1 and "read-only" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    monkeypatch.undo()
    assert _digests(run) == before


def test_a_writer_in_another_process_is_refused(run, capsys):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from toughen.runs import RunLock; "
                               "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _digests(run)
        code, _, stderr = run_cli(["train", "--data", "digits", "--epochs", "1", "--overwrite", "--out", str(run)],
                                  capsys)
        assert code == 2 and f"another toughen process (pid {holder.pid})" in stderr
        assert _digests(run) == before
    finally:
        holder.kill()
        holder.wait()
    code, _, _ = run_cli(["train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--steps", "1",
                          "--eval-steps", "1", "--amp", "fp32", "--overwrite", "--out", str(run), "--json"], capsys)
    assert code == 0, "a killed owner leaves no lock behind"


def test_a_sweep_directory_has_one_writer_and_a_corrupted_plan_is_a_clear_error(tmp_path):
    from toughen.errors import ToughenUsageError
    from toughen.sweep import PLAN_FILE, run_sweep

    out = tmp_path / "sweep"
    with RunLock(out):
        with pytest.raises(ToughenUsageError, match="being written by another toughen process"):
            run_sweep("eps=0.1,0.2", {"data": "digits"}, out)
    (out / PLAN_FILE).write_text('{"grid": ')
    with pytest.raises(ToughenUsageError, match="is corrupted; move it away"):
        run_sweep("eps=0.1,0.2", {"data": "digits"}, out)
    assert (out / PLAN_FILE).read_text() == '{"grid": '


def test_a_nan_loss_message_names_only_a_checkpoint_that_exists_and_blames_lr_only_after_an_update(tmp_path,
                                                                                                   monkeypatch):
    import torch

    from toughen.train import TrainingDiverged
    from toughen.train.recipes import RECIPES, StepOutput

    with pytest.raises(TrainingDiverged) as first:  # lr 1e30 on a fresh run: NaN within the first epoch
        train(TrainConfig(data="digits", model="small_cnn", recipe="standard", lr=1e30, epochs=2, eval_steps=0,
                          val_attack_steps=1, amp=None, channels_last=False), tmp_path / "a", progress=False)
    message = str(first.value)
    assert "epoch 1" in message and "lower --lr (now 1e+30)" in message
    assert "checkpoint" not in message and not (tmp_path / "a" / "checkpoint.pt").exists()

    def nan_from_the_start(model, x, y, ctx):  # e.g. NaN in the data: not lr's fault
        return StepOutput(torch.nn.functional.cross_entropy(model(x), y) * float("nan"))

    monkeypatch.setitem(RECIPES._entries, "nan_from_the_start", nan_from_the_start)
    with pytest.raises(TrainingDiverged) as second:
        train(TrainConfig(data="digits", recipe="nan_from_the_start", epochs=1, eval_steps=0, val_attack_steps=1,
                          amp=None, channels_last=False), tmp_path / "b", progress=False)
    message = str(second.value)
    assert "before any weight update" in message and "would not help" in message and "checkpoint" not in message


def test_an_eof_error_is_explained_not_turned_into_a_bare_abort(run, capsys, monkeypatch):
    """click turns any EOFError inside a command into "Aborted."; toughen says what it was."""
    from toughen.train import loop

    (run / "summary.json").unlink()  # an interrupted run whose checkpoint is empty
    (run / "checkpoint.pt").write_bytes(b"")
    code, _, stderr = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "is empty or cut short" in stderr and len(stderr.strip().splitlines()) == 1, stderr

    def cut_short(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(loop, "load_checkpoint", cut_short)  # an EOFError that no reader of toughen's catches
    code, _, stderr = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "corrupted or not what it should be (EOFError: Ran out of input)" in stderr, stderr
    assert "Aborted" not in stderr


def test_l2_restarts_after_every_example_is_fooled(run, capsys):
    """The probe's `eval --norm l2 --eps 7 --restarts 2`: once every example is fooled, the next
    restart has an empty batch to start from (it used to crash in random_start)."""
    code, stdout, stderr = run_cli(["eval", str(run), "--norm", "l2", "--eps", "7", "--restarts", "2", "--steps", "2",
                                    "--n", "20", "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["robust_accuracy"] == 0.0
