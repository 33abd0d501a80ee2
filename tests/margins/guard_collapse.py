"""Measure the margins of tests/test_guard.py's natural-collapse thresholds: the test's fgsm run
on mnist5k (eps 0.25, constant lr, fp32 channels-last), unguarded and guarded, for seeds 0-2 and
each ISA setting, one process per run. Prints one JSON line per run and a summary.

    python tests/margins/guard_collapse.py            # about 10 minutes on 2 cores

Not a test (pytest does not collect this folder's files): the source of the numbers quoted in
the test's docstring, to be re-run when the recipe, the guard or the thresholds change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

RUN = r'''
import json, sys, torch
from toughen.attacks import Attack
from toughen.data import load_data
from toughen.evaluation import attack_correct
from toughen.models import build_model
from toughen.train import TrainConfig, fit
torch.set_num_threads(2)
seed, guard = int(sys.argv[1]), sys.argv[2] == "1"
splits = load_data("mnist5k")
torch.manual_seed(seed)
model = build_model("small_cnn", splits.input_shape, splits.num_classes, splits.mean, splits.std)
cfg = TrainConfig(data="mnist5k", recipe="fgsm", eps=0.25, epochs=6, lr_schedule="constant", seed=seed,
                  val_attack_steps=5, amp=None, channels_last=True, guard=guard, select="last", eval_steps=0)
history = fit(model, splits, cfg, progress=False)
model = model.eval().to(memory_format=torch.contiguous_format)
robust = attack_correct(model, splits.x_test[:500], splits.y_test[:500], Attack("pgd", {"steps": 10}), eps=0.25,
                        generator=torch.Generator().manual_seed(0)).float().mean().item()
print(json.dumps({"val_robust": [r["val_robust_accuracy"] for r in history],
                  "val_clean": history[-1]["val_clean_accuracy"], "robust": robust,
                  "events": [e["switched"] for r in history for e in r["guard_events"]]}))
'''


def main() -> None:
    runs = []
    for isa in (None, "AVX512_CORE_BF16", "AVX2"):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa is not None:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        for seed in (0, 1, 2):
            pair = {}
            for guard in (0, 1):
                out = subprocess.run([sys.executable, "-c", RUN, str(seed), str(guard)], env=env, check=True,
                                     capture_output=True, text=True).stdout
                pair[guard] = json.loads(out.strip().splitlines()[-1])
                print(json.dumps({"isa": isa or "default", "seed": seed, "guard": bool(guard), **pair[guard]}),
                      flush=True)
            u, g = pair[0], pair[1]
            runs.append({"early": max(u["val_robust"][:2]), "last_ratio": u["val_robust"][-1] / max(u["val_robust"][:2]),
                         "robust": u["robust"], "clean": u["val_clean"], "gain": g["robust"] - u["robust"]})
    print(json.dumps({"early_min": min(r["early"] for r in runs), "last_ratio_max": max(r["last_ratio"] for r in runs),
                      "unguarded_robust_max": max(r["robust"] for r in runs),
                      "unguarded_clean_min": min(r["clean"] for r in runs),
                      "guard_gain_min": min(r["gain"] for r in runs)}))


if __name__ == "__main__":
    main()
