"""Pretrained backbones to fine-tune adversarially: ``timm:NAME`` and ``MODULE:FUNCTION``.

A backbone was trained elsewhere, on other images, at another size, with its own normalization
and its own classes. :class:`Backbone` wraps it so that the run's model is like any other
toughen model: it takes the dataset's images in their bounds ([0, 1]) and shape, and returns one
logit per class of the dataset. Three things stand between the two (:class:`BackboneInput`):

- a grey image is repeated into the three channels a backbone expects;
- it is resized (bilinear) to the backbone's input size. The resize is part of the model, so
  attacks perturb, and eps measures, the dataset's own pixels, not the upsampled ones;
- it is normalized with the *backbone's* mean and std (its pretrained features expect them), not
  the dataset's.

The classification head is replaced by a new one for the dataset's classes; ``--weights FILE``
loads the pretrained weights (safetensors, or a PyTorch state dict read with
``weights_only=True``: reading weights executes no code) into everything but that head.

``timm:NAME`` needs the optional ``timm`` package; the model is built with ``pretrained=False``
(nothing downloads) and its input size, mean and std come from its ``pretrained_cfg``.
``MODULE:FUNCTION`` is the audit's factory form: a function, imported from the current directory
or ``PYTHONPATH``, that returns an ``nn.Module`` taking [0, 1] inputs (it normalizes itself); its
last ``nn.Linear`` is the head that is replaced. Loading a run whose model is a factory imports
that module again, which runs its code: toughen does it only when ``TOUGHEN_TRUST_CODE=1`` says so
(a run directory alone never makes toughen execute code).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.models.layers import Normalize

TIMM = "timm:"
TRUST_CODE_ENV = "TOUGHEN_TRUST_CODE"
OPTIONS = ("image_size",)  # what --model-option may set for a backbone


def is_backbone(name: str) -> bool:
    """Whether a model name is a backbone spec rather than a registered model."""
    return isinstance(name, str) and ":" in name


def check_spec(name: str, options: dict) -> None:
    """The spec's form and options, before any data is loaded or package imported."""
    prefix, _, rest = name.partition(":")
    if not prefix or not rest or ":" in rest:
        raise ToughenUsageError(f"--model {name!r}: a backbone is timm:NAME or MODULE:FUNCTION")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ToughenUsageError(f"a backbone takes only these model options: {', '.join(OPTIONS)} (got {unknown})")
    size = options.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ToughenUsageError(f"image_size is the backbone's input side in pixels (>= 8), got {size!r}")


class BackboneInput(nn.Module):
    """The dataset's images -> the backbone's: channels repeated, resized, normalized."""

    def __init__(self, in_channels: int, channels: int, size: int | None, mean: Sequence[float] | None,
                 std: Sequence[float] | None):
        super().__init__()
        if in_channels not in (1, channels):
            raise ToughenUsageError(f"the backbone takes {channels}-channel images; the data has {in_channels}")
        self.repeat = channels if in_channels == 1 and channels != 1 else 1
        self.size = size
        self.normalize = Normalize(mean, std) if mean is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.normalize(x) if self.normalize is not None else x

    def extra_repr(self) -> str:
        return f"repeat={self.repeat}, size={self.size}"


class Backbone(nn.Module):
    """A pretrained network behind :class:`BackboneInput`, with a new head named ``head_name``."""

    def __init__(self, adapt: BackboneInput, net: nn.Module, head_name: str):
        super().__init__()
        self.adapt, self.net, self.head_name = adapt, net, head_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapt(x))

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.net.get_submodule(self.head_name).parameters()

    def freeze_body(self, frozen: bool) -> None:
        """Train only the head (the frozen-backbone warm-up), or again what the warm-up froze (a
        parameter the factory itself froze stays frozen)."""
        if frozen:
            head = {id(p) for p in self.head_parameters()}
            self._frozen = [p for p in self.net.parameters() if p.requires_grad and id(p) not in head]
        for p in getattr(self, "_frozen", []):
            p.requires_grad_(not frozen)
        if not frozen:
            self._frozen = []

    def load_pretrained(self, path: str | Path) -> None:
        """The backbone's pretrained weights from ``path``, into everything but the new head (whose
        shape is the dataset's). Every other weight must be in the file, with its shape."""
        state = read_state_dict(path)
        prefix = self.head_name + "."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        own = {k: v for k, v in self.net.state_dict().items() if not k.startswith(prefix)}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            def few(keys):
                return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems = [f"missing {few(missing)}" if missing else "", f"not in the model {few(unexpected)}"
                        if unexpected else "", f"other shapes {few(wrong)}" if wrong else ""]
            raise ToughenUsageError(f"--weights {path} does not fit the backbone: "
                                    f"{'; '.join(p for p in problems if p)}")
        self.net.load_state_dict(state, strict=False)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a PyTorch file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise ToughenUsageError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which, in one line
        raise ToughenUsageError(f"--weights {path} is not a readable state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint's usual wrapping
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ToughenUsageError(f"--weights {path} holds no state dict of tensors")
    return state


def build_backbone(name: str, input_shape: Sequence[int], num_classes: int, image_size: int | None = None
                   ) -> Backbone:
    """The backbone ``name`` with its input adapter and a new head for ``num_classes`` classes, at
    random initialization (``Backbone.load_pretrained`` fills it)."""
    check_spec(name, {"image_size": image_size} if image_size is not None else {})
    if name.startswith(TIMM):
        return _timm(name[len(TIMM):], input_shape, num_classes, image_size)
    return _factory(name, input_shape, num_classes, image_size)


def _timm(arch: str, input_shape: Sequence[int], num_classes: int, image_size: int | None) -> Backbone:
    try:
        import timm
    except ImportError as e:
        raise ToughenUsageError(f"--model timm:{arch} needs timm: pip install 'toughen[timm]' ({e})") from None
    if not timm.is_model(arch):
        raise ToughenUsageError(f"timm has no model {arch!r} (timm.list_models() lists them)")
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)  # pretrained=False: no download
    cfg = net.pretrained_cfg
    channels, height, _ = cfg.get("input_size", (3, 224, 224))
    adapt = BackboneInput(input_shape[0], channels, image_size or height, cfg.get("mean"), cfg.get("std"))
    return Backbone(adapt, net, cfg.get("classifier") or _last_linear(net))


def factory_model(spec: str) -> nn.Module:
    """The ``nn.Module`` that the function ``MODULE:FUNCTION`` returns, the module imported from the
    current directory or ``PYTHONPATH`` (`toughen audit --model` and the backbones share this)."""
    module_name, _, func_name = spec.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToughenUsageError(f"cannot import {module_name!r} for --model {spec}: {e}; run from the directory "
                                "that holds it or add it to PYTHONPATH") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ToughenUsageError(f"{module_name} has no function {func_name!r} (--model MODULE:FUNCTION)")
    net = factory()
    if not isinstance(net, nn.Module):
        raise ToughenUsageError(f"--model {spec} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _factory(spec: str, input_shape: Sequence[int], num_classes: int, image_size: int | None) -> Backbone:
    net = factory_model(spec)
    head_name = _last_linear(net)
    old = net.get_submodule(head_name)
    parent_name, _, attr = head_name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else input_shape[0]
    # A factory's model normalizes its own inputs (the audit's convention), so no mean and std here.
    return Backbone(BackboneInput(input_shape[0], channels, image_size, None, None), net, head_name)


def _last_linear(net: nn.Module) -> str:
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ToughenUsageError(f"{type(net).__name__} has no nn.Linear layer to replace with the new head")
    return names[-1]


def load_start_weights(model: nn.Module, path: str | Path) -> None:
    """``--weights``: a backbone's pretrained weights (all but its new head), or all of a registered
    model's (a run's model.safetensors, say, to fine-tune it further)."""
    if isinstance(model, Backbone):
        model.load_pretrained(path)
        return
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ToughenUsageError(f"--weights {path} does not fit the model: "
                                f"{first[1].strip() if len(first) > 1 else first[0]}") from None


def check_trusted(name: str) -> None:
    """Before a run's model is rebuilt from its config: a factory model's import runs its code, so
    it needs TOUGHEN_TRUST_CODE=1 (registered models and timm:NAME are names, not code)."""
    if is_backbone(name) and not name.startswith(TIMM) and os.environ.get(TRUST_CODE_ENV) != "1":
        raise ToughenUsageError(f"this run's model is built by {name}, Python code outside the run; toughen imports "
                                f"it only when told to: set {TRUST_CODE_ENV}=1 if you trust it")


__all__ = ["Backbone", "BackboneInput", "build_backbone", "check_spec", "check_trusted", "is_backbone",
           "factory_model", "load_start_weights", "read_state_dict"]
