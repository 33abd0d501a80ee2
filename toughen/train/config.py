"""The training configuration: one typed dataclass, written next to the results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from toughen import threat
from toughen.data import DATASETS
from toughen.errors import ToughenUsageError, check_number
from toughen.models import MODELS, is_backbone
from toughen.models.backbone import check_spec
from toughen.precision import check_amp, check_channels_last
from toughen.train._registry import RECIPES, awp_recipes, declared_parameters, traits

OPTIMIZERS = ("sgd", "adam")
# Every numeric field: its range (toughen.errors.check_number), checked before anything is
# written. Upper bounds only where a larger value is surely a typo (a million epochs).
_WHOLE_STEPS = dict(low=0, high=100_000, whole=True)
# The guard's last fallback, and a fallback one may name: the pgd recipe with 2 steps.
PGD2 = "pgd2"
# The guard's default first fallback: atta_free where it can run, else PGD2 (guard.py says why).
AUTO_FALLBACK = "auto"

NUMBERS: dict[str, dict[str, Any]] = {
    "val_size": dict(low=0, above=True),
    "steps": _WHOLE_STEPS, "eval_steps": _WHOLE_STEPS, "val_attack_steps": {**_WHOLE_STEPS, "optional": True},
    "step_size": dict(low=0, above=True, optional=True),
    "epochs": dict(low=1, high=100_000, whole=True), "batch_size": dict(low=1, high=10_000_000, whole=True),
    "lr": dict(low=0, above=True), "momentum": dict(low=0, high=1), "weight_decay": dict(low=0),
    "label_smoothing": dict(low=0, high=1),
    "eps_warmup": dict(low=0, high=1), "crop_pad": dict(low=0, high=10_000, whole=True),
    "seed": dict(low=0, whole=True), "grad_clip": dict(low=0, above=True, optional=True),
    "patience": dict(low=1, whole=True, optional=True), "freeze_epochs": dict(low=0, whole=True),
    "guard_every": dict(low=0, whole=True), "guard_n": dict(low=1, whole=True), "guard_steps": dict(low=1, whole=True),
    "guard_ratio": dict(low=0, high=1, above=True), "eval_n": dict(low=1, whole=True, optional=True),
    "ema": dict(low=0, high=1, optional=True),
    # gamma: 0.005-0.01 in the paper; a tenth of every layer's norm would be far past any useful size
    "awp": dict(low=0, high=0.1, optional=True),
}
LR_SCHEDULES = ("constant", "onecycle", "cosine", "piecewise")
SELECT_MODES = ("best", "last")
SELECT_ATTACKS = ("pgd", "apgd")
# BatchNorm while the training attack is crafted: batch statistics (and their running averages
# updated by every attack pass, the usual practice) or the running statistics, untouched
ATTACK_BN_MODES = ("train", "eval")


@dataclass(init=False)
class TrainConfig:
    """Everything a run needs, flat: ``TrainConfig(recipe="mix", lam=0.5)``, config.yaml and the
    ``train`` flags use the same keys. The fields below apply to every recipe; a recipe's own
    parameters (lam, beta, ...) are declared with it (toughen.train._registry.register_recipe) and
    live in ``recipe_params``, read and set as attributes like the fields (``cfg.lam``)."""

    # what to train
    data: str = "mnist5k"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)  # the dataset's own, e.g. {resize: 64} (imagefolder)
    val_size: float = 0.1  # a count, or a fraction of the training split when < 1
    model: str = "small_cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    # a model of timm:NAME or MODULE:FUNCTION is a pretrained backbone (toughen.models.backbone), fine-tuned
    weights: str | None = None  # its pretrained weights (a registered model's: all of them) at the start
    freeze_epochs: int = 0  # train only the backbone's new head for this many epochs first
    normalize: bool = True  # the model's first layer normalizes with the training split's stats
    # how to train it
    recipe: str = "pgd"
    eps: float = 0.3
    norm: str = "linf"
    steps: int = 10  # attack steps during training
    step_size: float | None = None  # default 2.5 * eps / steps
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    # label smoothing of the training loss's cross-entropy (not MART's, not the attacks'); 0: off, the
    # default: it weakens the CE attacks that validation and the guard use (docs/training.md)
    label_smoothing: float = 0.0
    # BatchNorm's mode while the training attack is crafted (Pang et al. 2021): "train" or "eval"
    attack_bn: str = "train"
    lr_schedule: str = "onecycle"
    eps_warmup: float = 0.0  # fraction of training over which eps ramps linearly from 0
    crop_pad: int = 0  # every recipe: random crops of each training image padded by this many pixels, on the device
    flip: bool = False  # every recipe: horizontal flips of half the training images, on the device
    seed: int = 0
    # "auto" (the faster of fp32 and bf16, timed on the first batch; bf16 on CUDA), None (fp32),
    # "bf16" or "fp16": autocast for the training step, its attack included
    amp: str | None = "auto"
    # NHWC memory format (True), NCHW (False), or "auto": the faster on the first batch
    channels_last: bool | str = "auto"
    compile: bool = False  # torch.compile the model of the training step (recipe and attack); pays off on GPUs
    grad_clip: float | None = None  # max global L2 norm of the gradient
    # an EMA of the weights (toughen.train.ema), decay in (0, 1); None or 0: off. When on it is the
    # model validated, selected, saved and evaluated; model_raw.safetensors keeps the trained weights
    ema: float | None = None
    ema_warmup: bool = True  # decay_t = min(ema, (1 + t) / (10 + t)) after t steps
    # adversarial weight perturbation (toughen.train.awp; pgd, trades, mart): gamma, each weight tensor's
    # move relative to its norm, e.g. 0.005; None or 0: off
    awp: float | None = None
    # model selection and early stopping, on the validation split's robust accuracy
    select: str = "best"  # "best": the run's model is the best validation epoch; "last": the final one
    patience: int | None = None  # stop after this many epochs without a better validation epoch
    # the validation split's attack each epoch: "pgd", or "apgd" (APGD-CE, then APGD-DLR on what it
    # left robust: the worst case of the two, the start of AutoAttack, at the same steps)
    select_attack: str = "pgd"
    # the catastrophic-overfitting guard (single-step recipes only)
    guard: bool = True
    guard_every: int = 0  # probe every N batches; 0 = once per epoch, at its end
    guard_n: int = 128  # validation examples in the fixed probe batch
    guard_steps: int = 5  # PGD steps of the probe
    guard_ratio: float = 0.5  # collapse: probe PGD accuracy < guard_ratio * its best so far
    # the first safer recipe to switch to (then pgd with 2 steps); "auto": atta_free, or pgd2 where
    # atta_free cannot run (crops, flips, torchrun)
    guard_fallback: str = AUTO_FALLBACK
    # how to measure it
    val_attack_steps: int | None = None  # PGD steps on the validation split each epoch; default `steps`
    eval_steps: int = 20  # PGD steps for the test-split robust accuracy in summary.json
    eval_n: int | None = None  # test examples to evaluate (all when None)
    # every declared recipe parameter (all recipes', as the guard may switch): {name: value}
    recipe_params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        declared = declared_parameters()
        fields = {f.name: f for f in dataclasses.fields(self)}
        clash = sorted(set(declared) & set(fields))
        if clash:
            raise ValueError(f"recipe parameters {', '.join(clash)} have the names of TrainConfig fields; rename them")
        params = dict(values.pop("recipe_params", None) or {})  # dataclasses.replace passes it back
        params.update({k: values.pop(k) for k in list(values) if k in declared})
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError(f"TrainConfig got unknown keys {', '.join(unknown)}")
        for name, f in fields.items():
            if name in values:
                value = values[name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, name, value)
        self.recipe_params = {**{k: p.default for k, p in declared.items()}, **params}

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields: a recipe's parameter
        params = self.__dict__.get("recipe_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"TrainConfig has no field or recipe parameter {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("recipe_params", ()) and name not in self.__dataclass_fields__:
            self.recipe_params[name] = value
        else:
            object.__setattr__(self, name, value)

    @classmethod
    def keys(cls) -> list[str]:
        """The flat keys of a config: the fields and every declared recipe parameter."""
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "recipe_params"]
        at = fields.index("step_size") + 1  # the recipe's parameters next to the attack's, as config.yaml has them
        return fields[:at] + list(declared_parameters()) + fields[at:]

    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else threat.default_step_size(self.eps, self.steps)

    def validate(self) -> "TrainConfig":
        """Check everything that can be checked before any file is written or data loaded."""
        DATASETS.get(self.data)
        if isinstance(self.model, str) and is_backbone(self.model):
            check_spec(self.model, self.model_options if isinstance(self.model_options, dict) else {})
        else:
            MODELS.get(self.model)
        RECIPES.get(self.recipe)
        for name in ("data", "model", "recipe", "norm", "optimizer", "lr_schedule", "select", "select_attack", "attack_bn",
                     "guard_fallback"):
            if not isinstance(getattr(self, name), str):
                raise ToughenUsageError(f"{name} must be a name, got {getattr(self, name)!r}")
        for name in ("normalize", "guard", "ema_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise ToughenUsageError(f"{name} is true or false, got {getattr(self, name)!r}")
        self._validate_recipe_params()
        if not isinstance(self.model_options, dict):
            raise ToughenUsageError(f"model_options is a mapping of the model's options, got {self.model_options!r}")
        for name, limits in NUMBERS.items():
            check_number(name, getattr(self, name), **limits)
        threat.check_eps(self.eps, self.norm)
        if self.optimizer not in OPTIMIZERS:
            raise ToughenUsageError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ToughenUsageError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
            )
        check_amp(self.amp)
        check_channels_last(self.channels_last)
        self._validate_new_fields()
        if not isinstance(self.compile, bool):
            raise ToughenUsageError(f"compile is true or false, got {self.compile!r}")
        if not isinstance(self.flip, bool):
            raise ToughenUsageError(f"flip is true or false, got {self.flip!r}")
        if not isinstance(self.data_options, dict):
            raise ToughenUsageError(f"data_options is a mapping of the dataset's options, got {self.data_options!r}")
        per_example = self.per_example_recipe()
        if per_example is not None and (self.crop_pad or self.flip):
            which = per_example if per_example == self.recipe else f"{per_example} (the guard's fallback)"
            raise ToughenUsageError(
                f"the {which} recipe keeps each training image's perturbation between epochs, which random "
                "crops and flips would misalign: drop --crop-pad/--flip, or use fgsm_rs or nfgsm"
            )
        return self

    def guarded(self) -> bool:
        """Whether the catastrophic-overfitting guard watches this run: it is on and the recipe
        is a single-step one."""
        return self.guard and traits(self.recipe).single_step

    def resolved_guard_fallback(self, distributed: bool = False) -> str:
        """The guard's first fallback: ``guard_fallback``, with "auto" settled for this run."""
        if self.guard_fallback != AUTO_FALLBACK:
            return self.guard_fallback
        return PGD2 if self.crop_pad or self.flip or distributed else "atta_free"

    def per_example_recipe(self, distributed: bool = False) -> str | None:
        """The recipe of this run, or the guard's fallback, that remembers each training example
        between epochs (atta, atta_free), if any: it cannot take crops, flips or torchrun."""
        candidates = [self.recipe] + ([self.resolved_guard_fallback(distributed)] if self.guarded() else [])
        return next((r for r in candidates if r != PGD2 and traits(r).per_example), None)

    def _validate_recipe_params(self) -> None:
        declared = declared_parameters()
        for name, value in self.recipe_params.items():
            p = declared.get(name)
            if p is None:
                raise ToughenUsageError(f"unknown recipe parameter {name!r}; known: {', '.join(declared)}")
            if p.kind is bool and not isinstance(value, bool):
                raise ToughenUsageError(f"{name} is true or false, got {value!r}")
            if p.kind is str and not (isinstance(value, str) or (value is None and p.optional)):
                raise ToughenUsageError(f"{name} must be a name, got {value!r}")
            if p.kind in (int, float):
                check_number(name, value, **p.limits_for_check())

    def _validate_new_fields(self) -> None:
        if self.weights is not None and not isinstance(self.weights, str):
            raise ToughenUsageError(f"weights is the path of a weights file, got {self.weights!r}")
        if self.freeze_epochs and not is_backbone(self.model):
            raise ToughenUsageError("freeze_epochs trains a backbone's new head first: it needs --model timm:NAME "
                                    "or MODULE:FUNCTION")
        if self.ema is not None and self.ema >= 1:
            raise ToughenUsageError(f"ema is the decay of the weights' average, in (0, 1) (0: off), got {self.ema}")
        if self.guard_ratio >= 1:
            raise ToughenUsageError(f"guard_ratio must be in (0, 1), got {self.guard_ratio}")
        if self.select not in SELECT_MODES:
            raise ToughenUsageError(f"unknown select {self.select!r}; choose one of: {', '.join(SELECT_MODES)}")
        if self.select_attack not in SELECT_ATTACKS:
            raise ToughenUsageError(f"unknown select_attack {self.select_attack!r}; choose one of: "
                                    f"{', '.join(SELECT_ATTACKS)}")
        if self.attack_bn not in ATTACK_BN_MODES:
            raise ToughenUsageError(f"unknown attack_bn {self.attack_bn!r}; choose one of: {', '.join(ATTACK_BN_MODES)}")
        if self.attack_bn == "eval" and "free" in (self.recipe, self.guard_fallback):
            raise ToughenUsageError("attack_bn eval does not apply to recipe free (here the recipe or the guard's "
                                    "fallback): its attack steps are its training passes; leave attack_bn at train")
        if self.guard_fallback not in (PGD2, AUTO_FALLBACK):
            RECIPES.get(self.guard_fallback)
        if self.awp and not traits(self.recipe).awp:
            names = awp_recipes()
            listed = " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)
            raise ToughenUsageError(f"--awp applies to {listed}; recipe {self.recipe} does not support it "
                                    "(docs/training.md, \"Adversarial weight perturbation\")")

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping written as config.yaml: fields and recipe parameters side by side."""
        flat = {**dataclasses.asdict(self), **self.recipe_params}
        del flat["recipe_params"]
        order = {k: i for i, k in enumerate(self.keys())}
        return dict(sorted(flat.items(), key=lambda kv: order.get(kv[0], len(order))))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return from_known_fields(cls, values, "unknown config keys: {unknown}; known: {known}", known=cls.keys())


def from_known_fields(cls, values: dict[str, Any], message: str, known: list[str] | None = None):
    """``cls(**values)`` for a config dataclass, refusing keys it does not have (``known``; default
    its fields) with ``message`` (formatted with ``{unknown}`` and ``{known}``) rather than a TypeError."""
    if not isinstance(values, dict):
        raise ToughenUsageError(f"a config is a mapping of keys to values, got {type(values).__name__}: {values!r:.80}")
    known = set(known) if known is not None else {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ToughenUsageError(message.format(unknown=", ".join(unknown), known=", ".join(sorted(known))))
    return cls(**values)
