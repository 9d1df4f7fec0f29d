"""Paper figures from evaluation outputs. Every ``plot_*`` takes tables produced by
:mod:`optscale.evaluation` and returns a matplotlib Figure; saving is
:func:`optscale.provenance.save_figure`'s job."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["plot_pareto", "plot_savings"]

_MARKERS = "osD^v<>PXh*p8d"


def plot_pareto(summary: pd.DataFrame, curves: pd.DataFrame, title: str = "", ax=None):
    """Accuracy vs mean tokens per question: one point per policy with bootstrap CI bars in both
    directions, the BoN curve (N = 1..max_N) and the oracle frontier, with their CI bands.

    ``summary``: rows of :attr:`Evaluation.summary` for one dataset; ``curves``:
    :func:`optscale.evaluation.curve_table` for the same dataset."""
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
    whose accuracy is not shown equivalent to BoN (paired test) are hatched."""
    s = savings[~savings["policy"].isin(["bon"])].copy()
    datasets = list(dict.fromkeys(s["dataset"]))
    policies = list(dict.fromkeys(s["policy"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(policies) * max(1, len(datasets))), 3.8))
    width = 0.8 / max(1, len(datasets))
    x = np.arange(len(policies))
    for j, ds in enumerate(datasets):
        g = s[s["dataset"] == ds].set_index("policy").reindex(policies)
        err = np.vstack([g["saved"] - g["saved_lo"], g["saved_hi"] - g["saved"]])
        bars = ax.bar(x + j * width, 100 * g["saved"], width, yerr=100 * np.nan_to_num(err), capsize=2, label=ds)
        for b, ok in zip(bars, g["matches_bon"].fillna(False)):
            if not ok:
                b.set_hatch("//")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels(policies, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("tokens saved vs BoN@max_N (%)")
    ax.set_title(title + ("\n" if title else "") + "hatched: accuracy not shown equivalent to BoN (paired test)",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
