"""Where a command runs: the device, the per-rank seeds, and data-parallel training and evaluation
on PyTorch's own engine (DDP), started by ``torchrun``.

    torchrun --nproc-per-node 4 -m toughen train --config configs/cifar10_fgsm_rs.yaml --device cuda ...

``torchrun`` starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; :func:`setup` reads them and joins the process group (NCCL on GPUs, gloo on
CPUs). Without them (a plain ``toughen train``) everything here is a no-op, so the
single-process path is the same code.

How the work is split, so that N processes train like one process with the same global batch:

- Every rank draws the same permutation of the training set from the same seeded generator;
  each global batch of ``batch_size`` indices is split between the ranks, rank r taking every
  N-th index from position r (what ``DistributedSampler`` does to a whole epoch, done per batch
  so that the global batches are those of a single-process run).
- The model is wrapped in ``DistributedDataParallel``: the gradients of the training loss are
  averaged across ranks in the backward pass, so every rank takes the same optimizer step.
  The attacks inside a recipe run on each rank's own shard; their forward passes go through
  the wrapper but sync nothing (no per-forward buffer broadcast, so a rank can run a different
  number of attack passes without waiting for the others). BatchNorm statistics are gathered
  per rank in training and averaged across ranks (:meth:`Dist.sync_buffers`) before the model
  is probed, validated or saved.
- Validation and evaluation shard the examples the same way and sum the per-example counts
  across ranks (:func:`Dist.sum`). Each example lives on exactly one rank, so the worst case
  per example over several attacks is still taken per example before counting.
- Only rank 0 writes files; the others wait at a barrier where it matters.
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as td
from torch import nn

from toughen.errors import ToughenUsageError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``; one process when 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a batch of indices (or examples): every N-th, from position rank."""
        return idx[self.rank :: self.world_size] if self.enabled else idx

    def sum(self, values: Sequence[float], device: torch.device | str | None = None) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact). The
        reduction runs on ``device`` (default: this rank's GPU under NCCL, which reduces only
        GPU tensors; the CPU under gloo)."""
        if not self.enabled:
            return [float(v) for v in values]
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | str | None = None) -> bool:
        """True on every rank if ``flag`` is True on any rank (for decisions all must share)."""
        return self.sum([1.0 if flag else 0.0], device)[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def unshard(self, local: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`shard` for per-example results: every rank's part, interleaved
        back into the original order, on every rank (on ``local``'s device)."""
        if not self.enabled:
            return local
        parts = self.gather(local.cpu())
        out = torch.empty((sum(len(p) for p in parts), *local.shape[1:]), dtype=local.dtype)
        for r, part in enumerate(parts):
            out[r :: self.world_size] = part
        return out.to(local.device)

    def merge_evaluation(self, local: dict[str, Any]) -> dict[str, Any]:
        """One evaluation result (``toughen.evaluation.evaluate_attack`` or ``toughen.evaluate``)
        from every rank's result on its shard: the per-example ``robust`` mask interleaved back,
        robust accuracy recounted from it, clean accuracy and the ``per_attack`` rows averaged
        weighted by shard size, ``n`` summed, ``seconds`` the slowest rank's."""
        if not self.enabled:
            return local
        parts = self.gather({k: v for k, v in local.items() if k not in ("robust", "expected", "per_attack")})
        total = sum(p["n"] for p in parts)
        merged = dict(parts[0])
        merged["n"] = total
        merged["seconds"] = max(p["seconds"] for p in parts)
        merged["clean_accuracy"] = sum(p["clean_accuracy"] * p["n"] for p in parts) / total
        if "per_attack" in local:
            merged["per_attack"] = self.merge_rows(local["per_attack"], local["n"])
        robust = self.unshard(local["robust"])
        merged["robust"] = robust
        merged["robust_accuracy"] = robust.float().mean().item()
        if "expected" in local:  # a randomized model judged over draws: the per-example fractions too
            merged["expected"] = self.unshard(local["expected"])
            merged["expected_robust_accuracy"] = merged["expected"].mean().item()
            merged["expected_clean_accuracy"] = sum(p["expected_clean_accuracy"] * p["n"] for p in parts) / total
        return merged

    def merge_rows(self, rows: list[dict[str, Any]], n_local: int) -> list[dict[str, Any]]:
        """Rows of ``{"robust_accuracy", "seconds", ...}`` measured on each rank's ``n_local``
        examples (per attack of a suite, per eps of a curve): accuracies averaged weighted by
        shard size, seconds the slowest rank's, other keys rank 0's."""
        if not self.enabled:
            return rows
        parts = self.gather((rows, n_local))
        total = sum(n for _, n in parts)
        merged = []
        for i, row in enumerate(parts[0][0]):
            out = dict(row)
            out["robust_accuracy"] = sum(r[i]["robust_accuracy"] * n for r, n in parts) / total
            if "expected_robust_accuracy" in row:
                out["expected_robust_accuracy"] = sum(r[i]["expected_robust_accuracy"] * n for r, n in parts) / total
            if "seconds" in row:
                out["seconds"] = max(r[i]["seconds"] for r, _ in parts)
            merged.append(out)
        return merged

    def sync_buffers(self, model: nn.Module) -> None:
        """Make the model's buffers (BatchNorm running statistics) the same on every rank: the
        floating ones averaged, the others (counters) rank 0's. Each rank's BatchNorm layers
        see only its shard in training; before the model is probed, validated or saved, every
        rank must hold the same model, or their decisions (best epoch, the guard's switch) could
        differ."""
        if not self.enabled:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                td.all_reduce(buf.data, op=td.ReduceOp.SUM)
                buf.data.div_(self.world_size)
            else:
                td.broadcast(buf.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (itself when one process). Keep using the bare
        ``model`` for evaluation, checkpoints and anything that must not sync."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # No buffer sync in forward passes: an attack's passes must not wait on other ranks.
        # (torch >= 2.12 names this forward_sync_buffers; older releases broadcast_buffers.)
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
            return DDP(model, device_ids=ids, forward_sync_buffers=False)
        return DDP(model, device_ids=ids, broadcast_buffers=False)


SINGLE = Dist()

# Seeds of parallel streams (ranks, batches) are spaced by a prime, so that stream i's seed never
# equals stream j's for the small base seeds people use.
SEED_STRIDE = 7919


def stream_seed(seed: int, stream: int) -> int:
    """The seed of parallel stream ``stream`` (a rank, a batch) of a computation seeded ``seed``."""
    return seed + SEED_STRIDE * stream


def check_device(device: str) -> torch.device:
    """``device`` as a torch.device, or a usage error: unknown, or CUDA without a GPU."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ToughenUsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ToughenUsageError("--device cuda was asked for, but this PyTorch build sees no GPU")
    return dev


def from_env() -> Dist:
    """The job described by torchrun's environment variables (one process when they are absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ToughenUsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ToughenUsageError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Dist(rank, world, local)


def setup(device: str | torch.device = "cpu", timeout_s: float = 1800) -> tuple[Dist, torch.device]:
    """Join the process group torchrun described (once per process) and pick this rank's device.

    ``device`` is what the user asked for: "cuda" becomes cuda:LOCAL_RANK (one GPU per process,
    NCCL); "cpu" stays the CPU (gloo). Returns (:class:`Dist`, device). One process: (SINGLE,
    the device as given), and no process group.
    """
    dist = from_env()
    dev = torch.device(device)
    if not dist.enabled:
        return SINGLE, dev
    if dev.type == "cuda":
        if dev.index is not None:
            raise ToughenUsageError("under torchrun pass --device cuda, not cuda:N: each process takes cuda:LOCAL_RANK")
        if dist.local_rank >= torch.cuda.device_count():
            raise ToughenUsageError(
                f"LOCAL_RANK {dist.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "run at most one process per GPU (--nproc-per-node)"
            )
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    if not td.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        atexit.register(teardown)  # leave the group cleanly when the command ends
    return dist, dev


def teardown() -> None:
    """Leave the process group (at the end of a distributed command), every rank together."""
    if td.is_available() and td.is_initialized():
        # A rank that tears its group down while another still talks to it can abort that one
        # ("terminate called without an active exception", seen once in 20 test runs), so the
        # ranks meet first; one that is gone already (it failed) is waited for 30 s at most.
        try:
            if td.get_backend() == "gloo":
                td.monitored_barrier(timeout=datetime.timedelta(seconds=30))
            else:
                td.barrier()
        except RuntimeError:
            pass  # a rank is gone: there is no one left to wait for, and the group is left below
        td.destroy_process_group()


__all__ = ["SEED_STRIDE", "SINGLE", "Dist", "check_device", "from_env", "setup", "stream_seed", "teardown"]
