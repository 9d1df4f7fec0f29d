"""Paper figures from evaluation outputs. Every ``plot_*`` takes tables produced by
:mod:`optscale.evaluation` and returns a matplotlib Figure; saving is
:func:`optscale.provenance.save_figure`'s job."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["plot_pareto", "plot_savings", "plot_verifier_auroc"]

_MARKERS = "osD^v<>PXh*p8d"


def plot_pareto(summary: pd.DataFrame, curves: pd.DataFrame, title: str = "", ax=None):
    """Accuracy vs mean tokens per question: one point per policy with bootstrap CI bars in both
    directions, the BoN curve (N = 1..max_N) and the oracle frontier, with their CI bands.

    ``summary``: rows of :attr:`Evaluation.summary` for one dataset; ``curves``:
    :func:`optscale.evaluation.runner.curve_table` for the same dataset."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7.4, 4.2))
    styles = {"bon": ("BoN curve (N=1..max)", "-", "0.35"), "oracle": ("oracle frontier", "--", "0.6")}
    for name, g in curves.groupby("curve"):
        g = g.sort_values("N")
        label, ls, color = styles.get(name, (name, "-", "0.5"))
        ax.plot(g["tokens"], g["accuracy"], ls, color=color, lw=1.2, label=label, zorder=1)
        ax.fill_between(g["tokens"], g["accuracy_lo"], g["accuracy_hi"], color=color, alpha=0.12, lw=0)
    pal = plt.get_cmap("tab20")
    for i, r in enumerate(summary.itertuples()):
        if r.policy in ("bon",):
            marker, color = "s", "k"
        else:
            marker, color = _MARKERS[i % len(_MARKERS)], pal(i % 20)
        ax.errorbar(r.tokens, r.accuracy, yerr=[[r.accuracy - r.accuracy_lo], [r.accuracy_hi - r.accuracy]],
                    xerr=[[r.tokens - r.tokens_lo], [r.tokens_hi - r.tokens]], fmt=marker, color=color, ms=5,
                    capsize=2, lw=0.8, label=r.policy, zorder=3)
    ax.set_xlabel("mean tokens per question")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    # outside the axes, so that no point or CI bar is hidden behind it
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_savings(savings: pd.DataFrame, title: str = ""):
    """Tokens saved vs BoN@max_N per policy and dataset (bars with bootstrap CIs); policies
    whose accuracy is not shown non-inferior to BoN (``non_inferior``; tables without it:
    ``matches_bon``, equivalence) are hatched."""
    from matplotlib.patches import Patch

    s = savings[~savings["policy"].isin(["bon"])].copy()
    # hatch what is not shown non-inferior to BoN (older tables: not shown equivalent)
    flag, what = ("non_inferior", "not shown non-inferior to BoN") if "non_inferior" in s else \
        ("matches_bon", "not shown equivalent to BoN")
    datasets = list(dict.fromkeys(s["dataset"]))
    policies = list(dict.fromkeys(s["policy"]))
    # about 0.17 in per bar, at most 13 in wide, so that labels stay readable at page width
    fig, ax = plt.subplots(figsize=(min(13.0, max(6.0, 0.17 * len(policies) * max(1, len(datasets)) + 1.5)), 4.0))
    width = 0.8 / max(1, len(datasets))
    x = np.arange(len(policies))
    handles = []
    for j, ds in enumerate(datasets):
        g = s[s["dataset"] == ds].set_index("policy").reindex(policies)
        err = np.vstack([g["saved"] - g["saved_lo"], g["saved_hi"] - g["saved"]])
        bars = ax.bar(x + j * width, 100 * g["saved"], width, yerr=100 * np.nan_to_num(err), capsize=2, label=ds)
        handles.append(Patch(facecolor=bars.patches[0].get_facecolor(), label=ds))
        for b, ok in zip(bars, g[flag].fillna(False).astype(bool)):
            if not ok:
                b.set_hatch("//")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels(policies, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("tokens saved vs BoN@max_N (%)")
    ax.set_title(title + ("\n" if title else "") + f"hatched: accuracy {what} (paired bootstrap)", fontsize=8)
    handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label=f"accuracy {what}"))
    ax.legend(handles=handles, fontsize=7, ncol=min(6, len(handles)))
    fig.tight_layout()
    return fig


def plot_verifier_auroc(points: pd.DataFrame, ni_margin: float | None = None, title: str = ""):
    """How good must the verifier be? x: the verifier's within-question AUROC (bootstrap CI over
    questions); y, top row: OptScale's tokens saved vs BoN@max_N (%), bottom row: its accuracy
    minus BoN@max_N's (paired bootstrap CI), both from the cross-fitted evaluation. One column per
    benchmark, one point per (pool set, scorer): colour = scorer, marker = pool set; error bars
    are two-sided CIs; a filled marker is non-inferior to BoN. Vertical lines: chance (0.5) and
    the within-question AUROC of the token count alone (the baseline a verifier must beat).

    ``points``: :func:`optscale.evaluation.verifier_auroc.verifier_auroc_points`; ``ni_margin`` draws the
    non-inferiority margin (−margin) on the accuracy row."""
    datasets = list(dict.fromkeys(points["dataset"]))
    ncol = max(1, len(datasets))
    fig, axes = plt.subplots(2, ncol, figsize=(3.3 * ncol + 1.9, 5.6), squeeze=False, sharex=True)
    scorers = sorted(set(points["scorer"]))
    sets = list(dict.fromkeys(points["pool_set"]))
    pal = dict(zip(scorers, plt.get_cmap("tab10").colors))
    mk = dict(zip(sets, _MARKERS))
    for j, ds in enumerate(datasets):
        g = points[points["dataset"] == ds]
        for row, (col, scale, label) in enumerate((("saved", 100.0, "OptScale: tokens saved vs BoN (%)"),
                                                   ("acc_diff", 1.0, "OptScale accuracy − BoN accuracy"))):
            ax = axes[row][j]
            for r in g.itertuples():
                y, lo, hi = (scale * getattr(r, col), scale * getattr(r, f"{col}_lo"), scale * getattr(r, f"{col}_hi"))
                ax.errorbar(r.auroc_within, y, xerr=[[r.auroc_within - r.auroc_within_lo], [r.auroc_within_hi - r.auroc_within]],
                            yerr=[[y - lo], [hi - y]], fmt=mk[r.pool_set], color=pal[r.scorer], ms=6, capsize=2, lw=0.9,
                            mfc=pal[r.scorer] if r.non_inferior else "white", zorder=3)
            ax.axvline(0.5, color="0.5", lw=0.7, ls=":", zorder=1)
            if "auroc_within_fewer-tokens" in g and g["auroc_within_fewer-tokens"].notna().any():
                for xb in sorted(set(g["auroc_within_fewer-tokens"].dropna().round(6))):
                    ax.axvline(xb, color="tab:purple", lw=0.8, ls="-.", zorder=1)
            ax.axhline(0, color="k", lw=0.6, zorder=1)
            if row == 1 and ni_margin:
                ax.axhline(-ni_margin, color="tab:red", lw=0.8, ls="--", zorder=1)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ns = sorted(set(int(x) for x in g["n"]))
                ax.set_title(f"{ds} (vs BoN@{'/'.join(map(str, ns))})", fontsize=9)
            else:
                ax.set_xlabel("verifier AUROC within questions", fontsize=8)
            ax.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=pal[s], label=f"scorer {s}") for s in scorers]
    handles += [Line2D([], [], ls="", marker=mk[p], color="0.3", label=p) for p in sets]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label="hollow: not shown\nnon-inferior to BoN")]
    handles += [Line2D([], [], ls=":", color="0.5", label="chance (AUROC 0.5)")]
    if "auroc_within_fewer-tokens" in points:
        handles += [Line2D([], [], ls="-.", color="tab:purple", label="token count alone\n(shorter = correct)")]
    if ni_margin:
        handles += [Line2D([], [], ls="--", color="tab:red", label=f"non-inferiority margin −{ni_margin:g}")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
