"""Benchmark: how many images per second the data path delivers, against what training consumes.

Four numbers, images per second, on synthetic CIFAR-shaped data (nothing is downloaded):

1. decode: reading a folder of PNG files with toughen's ``imagefolder`` reader (a one-time cost
   per run: the images are then kept in memory as uint8);
2. device batches: an epoch of shuffled minibatches from the in-memory uint8 tensor, moved to
   ``--device``, converted to float and augmented there (pad-4 random crop + flip), as
   :class:`toughen.data.augment.DeviceBatches` does;
3. per-image loop: the same augmentation done one image at a time in Python, the way a
   ``Dataset.__getitem__`` with transforms feeds a ``DataLoader`` worker (for comparison);
4. training: a standard training step (forward, backward, SGD) of ``--model`` at the same batch
   size: what the loader has to keep up with. PGD-K training consumes about K + 1 times fewer.

    .venv/bin/python benchmarks/bench_loader.py                       # CPU, 1 thread
    .venv/bin/python benchmarks/bench_loader.py --device cuda --n 50000 --threads 8

Not a test. Writes benchmarks/results/loader.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toughen.data.augment import DeviceBatches, to_unit_float
from toughen.data.imagefolder import read_image_folder
from toughen.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_decode(n_files: int) -> float:
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_files):
            folder = Path(tmp) / f"class{i % 10}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
        start = time.perf_counter()
        read_image_folder(tmp)
        return n_files / (time.perf_counter() - start)


def bench_device_batches(x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> float:
    loader = DeviceBatches(x, y, batch_size=batch, device=device, pad=4, flip=True,
                           generator=torch.Generator(device=device).manual_seed(0),
                           shuffle_gen=torch.Generator().manual_seed(0))
    next(iter(loader))  # warm-up (CUDA context, allocator)
    _sync(device)
    start = time.perf_counter()
    seen = sum(len(xb) for xb, _ in loader)
    _sync(device)
    return seen / (time.perf_counter() - start)


def bench_per_image(x: torch.Tensor, n: int) -> float:
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(n):
        img = to_unit_float(x[i])
        padded = F.pad(img, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
        img = padded[:, dy : dy + 32, dx : dx + 32]
        if torch.rand(1, generator=gen).item() < 0.5:
            img = img.flip(-1)
    return n / (time.perf_counter() - start)


def bench_training(model_name: str, batch: int, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, (3, 32, 32), 10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=20000, help="images in the in-memory uint8 training set")
    ap.add_argument("--files", type=int, default=2000, help="PNG files to write and decode")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--model", default="preact_resnet18", help="model of the training-step comparison")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)

    rows = {
        "decode PNG folder (imagefolder reader, once per run)": bench_decode(args.files),
        f"device batches: uint8 -> {device.type}, crop+flip there": bench_device_batches(x, y, args.batch, device),
        "per-image crop+flip in a Python loop (CPU)": bench_per_image(x, min(args.n, 5000)),
        f"standard training step of {args.model} (what must be fed)": bench_training(
            args.model, args.batch, device, args.train_steps),
    }
    result = {
        "images_per_second": rows,
        "device": str(device),
        "batch_size": args.batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| path ({device}, batch {args.batch}, {args.threads} thread(s)) | images/s |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"\n1-minute load average while measuring: {result['load_average_1min']:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
