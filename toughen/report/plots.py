"""The report's figures, drawn with matplotlib and returned as inline ``data:`` PNG URIs.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot:
making a report must not change the plotting backend of the caller's notebook or script.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

# Accessible, print-friendly colours (Okabe & Ito 2008), cycled per run or recipe.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def png_uri(fig: Figure, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def array_uri(image: np.ndarray, *, cmap: str | None = None, vmin: float | None = None,
              vmax: float | None = None) -> str:
    """A small image (H, W) or (H, W, 3) as a PNG URI, one pixel per value (the page scales it up)."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, image, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _text(ax, *args, **kwargs):
    # parse_math=False: a label such as "$5" from a config must print as written, not as TeX.
    return ax.text(*args, parse_math=False, **kwargs)


def training_curves(metrics: list[dict], *, best_epoch: int | None, guard_epochs: Sequence[int]) -> str:
    """Loss (left) and train/validation clean and robust accuracy (right) per epoch, with the
    guard's interventions (red dotted lines) and the selected best epoch (green line) marked."""
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(metrics)]
    fig = Figure(figsize=(6.6, 2.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    losses = [row.get("loss") for row in metrics]
    ax_loss.plot(epochs, [np.nan if v is None else v for v in losses], marker="o", ms=3, color="#333333")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    series = [
        ("train_clean_accuracy", "train clean", COLORS[0], "--"),
        ("train_robust_accuracy", "train robust", COLORS[3], "--"),
        ("val_clean_accuracy", "val clean", COLORS[0], "-"),
        ("val_robust_accuracy", "val robust", COLORS[3], "-"),
    ]
    for key, label, color, style in series:
        values = [row.get(key) for row in metrics]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in values], style, marker="o", ms=3,
                        color=color, label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(-2, 102)
    for ax in (ax_loss, ax_acc):
        for i, e in enumerate(guard_epochs):
            first = ax is ax_acc and i == 0
            ax.axvline(e, color="#D55E00", ls=":", lw=1.5, label="guard intervened" if first else None)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#009E73", lw=2, alpha=0.6, label="best epoch" if ax is ax_acc else None)
        ax.grid(alpha=0.3)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    ax_acc.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def robustness_curves(lines: list[tuple[str, str, list[tuple[float, float]]]]) -> str:
    """Robust accuracy against eps: one line per (run, attack)."""
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.subplots()
    runs = list(dict.fromkeys(run for run, _, _ in lines))
    styles = ["-", "--", ":", "-."]
    attacks = list(dict.fromkeys(attack for _, attack, _ in lines))
    for run, attack, points in lines:
        eps, acc = zip(*points)
        ax.plot(eps, [100 * a for a in acc], styles[attacks.index(attack) % len(styles)], marker="o", ms=4,
                color=COLORS[runs.index(run) % len(COLORS)], label=f"{run}: {attack}")
    ax.set_xlabel("ε (threat-model radius; ε = 0 is clean accuracy)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both maximized), by x descending."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -np.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def tradeoff(points: list[dict]) -> str:
    """Clean against robust accuracy, one point per run, coloured by recipe and labelled; the
    Pareto front drawn per threat model (eps, norm), since robust accuracies at different eps
    are not comparable.

    Each point: ``{"label", "recipe", "group", "clean", "robust"}`` with accuracies in [0, 1].
    """
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.subplots()
    recipes = list(dict.fromkeys(p["recipe"] for p in points))
    groups = list(dict.fromkeys(p["group"] for p in points))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for g_idx, group in enumerate(groups):
        members = [p for p in points if p["group"] == group]
        front = pareto_front([(p["clean"], p["robust"]) for p in members])
        if len(front) >= 2:
            fx = [100 * members[i]["clean"] for i in front]
            fy = [100 * members[i]["robust"] for i in front]
            ax.plot(fx, fy, color="#888888", ls="--", lw=1.2, zorder=1,
                    label=f"Pareto front, {group}" if len(groups) > 1 else "Pareto front")
        for i, p in enumerate(members):
            on_front = i in front
            ax.scatter(100 * p["clean"], 100 * p["robust"], s=60 if on_front else 35, zorder=3,
                       marker=markers[g_idx % len(markers)], color=COLORS[recipes.index(p["recipe"]) % len(COLORS)],
                       edgecolor="black" if on_front else "none", linewidth=0.8)
            _text(ax, 100 * p["clean"], 100 * p["robust"], "  " + p["label"], fontsize=7, va="center", zorder=4)
    for r_idx, recipe in enumerate(recipes):  # legend entries: one per recipe, one per eps group
        ax.scatter([], [], color=COLORS[r_idx % len(COLORS)], label=f"recipe {recipe}")
    if len(groups) > 1:
        for g_idx, group in enumerate(groups):
            ax.scatter([], [], color="#777777", marker=markers[g_idx % len(markers)], label=group)
    xs = [100 * p["clean"] for p in points]
    ys = [100 * p["robust"] for p in points]
    pad = 4
    # room on the right for the labels, but no axis past 100%
    ax.set_xlim(max(-1, min(xs) - pad), min(100.5, max(xs) + pad + 0.3 * (max(xs) - min(xs) + 10)))
    ax.set_ylim(max(-1, min(ys) - pad), min(100.5, max(ys) + pad))
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def brackets(rows: list[dict]) -> str:
    """Per run, the bracket certified <= true robust accuracy <= attacked: a bar over the range
    no evaluation has ruled out, the certified part solid, and clean accuracy as a tick.

    Each row: ``{"label", "certified", "attacked" (or None), "clean" (or None)}`` in [0, 1]."""
    fig = Figure(figsize=(7.5, 0.6 + 0.45 * len(rows)))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        certified = 100 * row["certified"]
        ax.barh(i, certified, color=COLORS[2], height=0.5, label="certified" if i == 0 else None)
        if row.get("attacked") is not None:
            attacked = 100 * row["attacked"]
            ax.barh(i, max(attacked - certified, 0), left=certified, color="#DDDDDD", edgecolor=COLORS[3],
                    height=0.5, hatch="//", label="not known (certified to attacked)" if i == 0 else None)
        right = max(100 * (row.get("attacked") or row["certified"]), 100 * (row.get("clean") or 0)) + 1.5
        if row.get("attacked") is not None:
            _text(ax, right, i, f"{certified:.1f}% – {attacked:.1f}%", va="center", fontsize=8)
        else:
            _text(ax, right, i, f"≥ {certified:.1f}% (no attack run)", va="center", fontsize=8)
        if row.get("clean") is not None:
            ax.plot([100 * row["clean"]] * 2, [i - 0.3, i + 0.3], color="black", lw=2,
                    label="clean accuracy" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [row["label"] for row in rows], fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("accuracy (%)")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def certified_radius_curves(lines: list[tuple[str, list[tuple[float, float]]]]) -> str:
    """Randomized smoothing: certified accuracy against the L2 radius, one line per run."""
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.subplots()
    for i, (label, points) in enumerate(lines):
        radius, acc = zip(*sorted(points))
        ax.plot(radius, [100 * a for a in acc], marker="o", ms=3, color=COLORS[i % len(COLORS)], label=label)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def robust_radius(edges: Sequence[float], counts: Sequence[int], curve: list[tuple[float, float]], *, norm: str,
                  zero: int = 0, none_found: int = 0, measured: Sequence[tuple[str, list[tuple[float, float]]]] = ()
                  ) -> str:
    """Per-example robust radii: their histogram (left) and the robustness curve they give (right:
    robust accuracy at eps = fraction of radii > eps), with per-eps attack measurements of the
    same run as markers, for comparison."""
    fig = Figure(figsize=(7.5, 2.8))
    ax_h, ax_c = fig.subplots(1, 2)
    widths = np.diff(edges)
    ax_h.bar(edges[:-1], counts, width=widths, align="edge", color=COLORS[0], edgecolor="white", linewidth=0.5)
    ax_h.set_xlabel(f"robust radius ({norm})")
    ax_h.set_ylabel("examples")
    apart = [f"{zero} misclassified (radius 0)"] if zero else []
    apart += [f"{none_found} with none found" if none_found else "an adversarial input found for every example"]
    ax_h.set_title("; ".join(apart), fontsize=8)
    eps, acc = zip(*curve)
    ax_c.plot(eps, [100 * a for a in acc], color=COLORS[0], lw=1.8, label="from the radii")
    markers = ["o", "s", "^", "D", "v"]
    for i, (label, points) in enumerate(measured):
        e, a = zip(*points)
        ax_c.plot(e, [100 * v for v in a], ls="none", marker=markers[i % len(markers)], ms=5,
                  color=COLORS[(i + 1) % len(COLORS)], label=label)
    ax_c.set_xlabel(f"ε ({norm})")
    ax_c.set_ylabel("robust accuracy (%)")
    ax_c.set_ylim(-2, 102)
    for ax in (ax_h, ax_c):
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png_uri(fig)
