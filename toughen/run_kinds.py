"""Kinds of run directory beyond the image runs the core implements: text runs, today.

A kind plugs into the core's commands (audit, the report) through ``RUN_KINDS``, so that
evaluation and the report never import it. ``toughen.text`` registers "text" when it is
imported, and the ``toughen`` package imports it, so every entry point (the CLI, ``import
toughen``) sees it. A run's ``config.yaml`` names its kind (``kind: text``); an image run has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from toughen._registry import Registry


@dataclass(frozen=True)
class RunKind:
    """What the core asks of a kind of run it does not implement.

    audit: ``audit(run_dir, config, *, eps, norm, n, seed, device) -> report``, the sanity
        checks of ``toughen audit`` for such a run (it writes RUN_DIR/audit.json).
    threat_size: the size of the threat a run was evaluated at, from its config's train section.
    discrete_attacks: the attacks whose threat size counts edits rather than a radius.
    """

    audit: Callable[..., dict[str, Any]]
    threat_size: Callable[[dict[str, Any]], float]
    discrete_attacks: frozenset[str] = frozenset()


RUN_KINDS: Registry[RunKind] = Registry("run kind")


def kind_of(config: dict[str, Any]) -> RunKind | None:
    """The registered kind of a run, from its parsed config.yaml; None for an image run."""
    kind = config.get("kind")
    return None if kind is None else RUN_KINDS.get(kind)

