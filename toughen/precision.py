"""Making attacks fast without changing their answers: bf16 or fp16 autocast with the
full-precision check that keeps low-precision attacks honest, and the channels-last memory
format for image models.

Under autocast the forward and backward passes run about 2x faster (CPUs with bf16 instructions,
GPUs), and the gradient an attack follows is barely changed. But a logit computed in bf16 can
put an input on the wrong side of the decision boundary, so an attack that counted "fooled" from
low-precision logits would report robust accuracy too low. Every attack here therefore decides
who is fooled with :func:`confirm_fooled`: the candidates the low-precision pass calls fooled are
re-run in the model's own precision, and only those that are still fooled count.

Which precision is fastest depends on the machine: bf16 is 3-4x faster than fp32 on CPUs with
AMX, about 2x on some without (AMD EPYC with AVX512-BF16), slower on others (Intel Xeon without
AMX), and emulated where there are no bf16 instructions. :func:`choose_precision` ("auto")
therefore times the candidates on the real model and batch instead of guessing.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.logits import logits_of

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None, allow_auto: bool = True) -> None:
    """``amp`` is None (fp32), "bf16", "fp16", or (where ``allow_auto``) "auto"."""
    if amp is None or (isinstance(amp, str) and (amp in AMP_DTYPES or (allow_auto and amp == "auto"))):
        return
    choices = "auto, bf16 or fp16" if allow_auto else "bf16 or fp16"
    raise ToughenUsageError(f"unknown amp {amp!r}; choose {choices} (or None for fp32)")


def check_channels_last(value) -> None:
    """``value`` is True, False or "auto"."""
    if value not in (True, False, "auto"):
        raise ToughenUsageError(f"channels_last is true, false or auto, got {value!r}")


def parse_amp(text: str) -> str | None:
    """A command line's --amp: auto, fp32 (None), bf16 or fp16."""
    value = None if text.lower() in ("fp32", "none", "off") else text.lower()
    if value is not None and value not in (*AMP_DTYPES, "auto"):
        raise ToughenUsageError(f"unknown --amp {text!r}; choose auto, fp32, bf16 or fp16")
    return value


def autocast_for(device: torch.device | torch.Tensor, amp: str | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp`` ("bf16" or "fp16") on the device (of a tensor); a no-op when amp is None."""
    check_amp(amp, allow_auto=False)
    if amp is None:
        return contextlib.nullcontext()
    device_type = device.device.type if isinstance(device, torch.Tensor) else torch.device(device).type
    return torch.autocast(device_type, dtype=AMP_DTYPES[amp])


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Switch autocast off (inside an autocast region too)."""
    return torch.autocast(x.device.type, enabled=False)


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in the channels-last (NHWC) memory format inside the block, and put it back
    afterwards. The arithmetic is the same; the convolution and pooling kernels of oneDNN and of
    tensor cores are faster on it (measured: Square 25% and APGD 15% faster on small_cnn in fp32 on
    a 2-core CPU). A model without 4-D weights, or one already channels-last, is left as it is."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    if not enabled or not weights or all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def confirm_fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                   fooled: torch.Tensor) -> torch.Tensor:
    """``fooled`` (a per-example bool from low-precision logits) narrowed to the examples whose
    ``x_adv`` still fools the model in full precision: misclassified, or classified as ``target``.
    Only the candidates are re-run, so the check costs a forward pass of the few newly fooled."""
    fooled = fooled.clone()
    if not fooled.any():
        return fooled
    with torch.no_grad(), full_precision(x_adv):
        pred = logits_of(model, x_adv[fooled]).argmax(1)
    fooled[fooled.clone()] = pred != y[fooled] if target is None else pred == target[fooled]
    return fooled


# ----------------------------------------------------------------------------- automatic choice

AUTO = "auto"
# A faster candidate replaces fp32 contiguous only when its probe is at least this much faster:
# the probe is a few passes, and a choice that wins by less than its noise could lose in the run.
PROBE_MARGIN = 0.10
# A candidate whose first pass takes this many times fp32's is not timed further (bf16 emulated
# in software, for example, is 10x slower or worse and would make the probe itself slow).
PROBE_HOPELESS = 3.0


@dataclass(frozen=True)
class Precision:
    """The precision and memory layout a run uses, and how they were chosen.

    ``amp`` is None (fp32), "bf16" or "fp16"; ``chosen_by`` is "requested" (both given),
    "measured" (timed on the first batch: ``timings_ms`` per candidate, the best of a few
    forward+backward passes), or "cuda" (bf16 where the GPU supports it)."""

    amp: str | None
    channels_last: bool
    chosen_by: str = "requested"
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return _label(self.amp, self.channels_last)

    def to_dict(self) -> dict[str, Any]:
        return {"amp": self.amp, "channels_last": self.channels_last, "label": self.label,
                "chosen_by": self.chosen_by, "timings_ms": dict(self.timings_ms)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Precision":
        return cls(d["amp"], bool(d["channels_last"]), d.get("chosen_by", "requested"), dict(d.get("timings_ms", {})))


def _label(amp: str | None, channels_last: bool) -> str:
    """"fp32", "bf16+CL" (CL: the channels-last memory layout), as the benchmarks name them."""
    return (amp or "fp32") + ("+CL" if channels_last else "")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA with bf16 support; a CPU whose oneDNN
    has bf16 instructions: AVX512_BF16 or AMX, and not capped below them by ONEDNN_MAX_CPU_ISA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def is_channels_last(model: nn.Module) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


# Choices already measured in this process, by model structure, input shape, device and threads:
# the tests and the CLI train and evaluate the same small models many times, and a second probe
# would only spend time to find the same answer.
_MEASURED: dict[tuple, Precision] = {}


def choose_precision(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    amp: str | None = AUTO,
    channels_last: bool | str = AUTO,
    parameters: bool = False,
    repeats: int = 3,
) -> Precision:
    """The fastest precision and memory layout for ``model`` on a batch like ``x``.

    ``amp`` ("auto", None for fp32, "bf16", "fp16") and ``channels_last`` ("auto", True, False):
    what is not "auto" is kept; what is is decided here. On a CUDA device that supports it the
    precision is bf16; on a CPU every remaining candidate of fp32 / bf16 (bf16 only where the
    CPU has bf16 instructions) x contiguous / channels-last is timed on (x, y) with a few
    cross-entropy forward+backward passes (gradients of the input, and of the parameters when
    ``parameters``, as in training). A candidate replaces the first one (fp32 and contiguous
    where those are candidates) only when it is at least ``PROBE_MARGIN`` faster, so "auto" is
    not slower than fp32 contiguous beyond the probe's noise.

    The model is left as it was: its memory format, buffers (BatchNorm statistics), mode and
    parameter gradients are restored, and the global random state is not consumed.

    Example:
        >>> choice = choose_precision(model, x[:128], y[:128])
        >>> choice.label, choice.timings_ms   # e.g. "bf16+CL", {"fp32": 52.7, ..., "bf16+CL": 24.7}
    """
    check_amp(amp, allow_auto=True)
    check_channels_last(channels_last)
    device = x.device
    image = x.dim() == 4 and any(p.dim() == 4 for p in model.parameters())
    layouts = [False, True] if channels_last == AUTO and image else [bool(channels_last) and image]
    if amp != AUTO:
        amps: list[str | None] = [amp]
    elif device.type == "cuda":
        amps = ["bf16" if native_bf16(device) else None]
    else:
        amps = [None, "bf16"] if native_bf16(device) else [None]
    candidates = [(a, c) for a in amps for c in layouts]
    if len(candidates) == 1:
        by = "cuda" if amp == AUTO and device.type == "cuda" else "requested" if channels_last != AUTO else "only choice"
        return Precision(*candidates[0], by)
    key = (device.type, type(model).__name__, tuple(tuple(p.shape) for p in model.parameters()), tuple(x.shape),
           tuple(candidates), parameters, torch.get_num_threads(), os.environ.get("ONEDNN_MAX_CPU_ISA"))
    if key not in _MEASURED:
        _MEASURED[key] = _measure(model, x, y, candidates, parameters, repeats)
    return _MEASURED[key]


def _measure(model, x, y, candidates, parameters, repeats) -> Precision:
    was_channels_last, was_training = is_channels_last(model), model.training
    buffers = [b.detach().clone() for b in model.buffers()]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    base = candidates[0]
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            # A warm-up pass each (kernels chosen, caches filled), then rounds that alternate the
            # candidates, so a slow moment of the machine does not fall on one of them only.
            warm = {c: _timed_pass(model, x, y, c, parameters) for c in candidates}
            timed = [c for c in candidates if c == base or warm[c] <= PROBE_HOPELESS * warm[base]]
            best = {c: float("inf") for c in timed}
            for _ in range(repeats):
                for c in timed:
                    best[c] = min(best[c], _timed_pass(model, x, y, c, parameters))
    finally:
        model.to(memory_format=torch.channels_last if was_channels_last else torch.contiguous_format)
        model.train(was_training)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
    fastest = min(timed, key=best.__getitem__)
    chosen = fastest if best[fastest] * (1 + PROBE_MARGIN) < best[base] else base
    timings = {_label(*c): round(1000 * best.get(c, warm[c]), 2) for c in candidates}
    return Precision(chosen[0], chosen[1], "measured", timings)


def _timed_pass(model, x, y, candidate, parameters) -> float:
    amp, cl = candidate
    fmt = torch.channels_last if cl else torch.contiguous_format
    model.to(memory_format=fmt)
    xs = x.detach().contiguous(memory_format=fmt).requires_grad_(True)
    wrt = [xs] + ([p for p in model.parameters() if p.requires_grad] if parameters else [])
    _sync(x.device)
    start = time.perf_counter()
    with torch.enable_grad(), autocast_for(x, amp):
        loss = nn.functional.cross_entropy(logits_of(model, xs).float(), y)
    torch.autograd.grad(loss, wrt)
    _sync(x.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_amp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str | None) -> str | None:
    """``amp`` itself, or for "auto" the precision :func:`choose_precision` measures for the
    model in its current memory layout (what an attack function uses: it never moves the model)."""
    if amp != AUTO:
        return amp
    if len(x) == 0:
        return None
    return choose_precision(model, x, y, amp=AUTO, channels_last=is_channels_last(model)).amp
