"""Figures of what a pool holds (notebook 00). Each ``plot_*`` takes tidy frames / pools and
returns a matplotlib Figure; saving is :func:`optscale.provenance.save_figure`'s job."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..data.pools import Pool
from .policy_styles import FIXED_N_METHOD_POLICY, MARKER_EDGE, policy_style

__all__ = ["describe_scorers", "plot_fixed_n_curves", "plot_score_histograms", "pool_caption"]


def describe_scorers(scorer_of: Mapping[str, str]) -> str:
    """``{"gsm8k": "self-certainty", "math500": "answer-judge"}`` -> "gsm8k self-certainty,
    math500 answer-judge"; one name when every benchmark uses the same scorer."""
    names = set(scorer_of.values())
    if len(names) == 1:
        return names.pop()
    return ", ".join(f"{d} {s}" for d, s in scorer_of.items())


def pool_caption(pools: dict[str, Pool], scorer: str | Mapping[str, str] | None = None) -> str:
    """One line naming the pool(s) a figure came from: generator, scorer, n, seed, questions.
    ``scorer``: one name, or one per benchmark (``{"gsm8k": "self-certainty", ...}``)."""
    if not pools:
        return "no pools"
    if isinstance(scorer, Mapping):
        scorer = describe_scorers({d: scorer[d] for d in pools if d in scorer})
    any_pool = next(iter(pools.values()))
    g = any_pool.meta.get("generator", {})
    sizes = ", ".join(f"{d} {p.n_questions}x{p.n_per_question}" for d, p in pools.items())
    return (f"pool {any_pool.meta.get('pool_name', '?')}: generator {g.get('model', '?')} "
            f"({g.get('backend', '?')}, {g.get('dtype', '')}, T={g.get('temperature', '?')}, top_p={g.get('top_p', '?')}), "
            f"scorer {scorer or ', '.join(any_pool.scorers)}, seed {any_pool.meta.get('seed', '?')}; "
            f"questions x samples: {sizes}")


def plot_fixed_n_curves(curves: pd.DataFrame, title: str = "") -> plt.Figure:
    """Accuracy vs N (log2 axis) per method with bootstrap CI bands, one panel per dataset.
    ``curves``: output of :func:`optscale.evaluation.curves.fixed_n_curves` (concatenated over datasets)."""
    datasets = list(dict.fromkeys(curves["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3.0), squeeze=False, sharey=False)
    # each method in the style of the policy it is at a fixed N (the figures of notebooks 05-06)
    unknown = sorted(set(curves["method"]) - set(FIXED_N_METHOD_POLICY))
    if unknown:
        raise ValueError(f"plot_fixed_n_curves: method(s) {unknown} have no policy style; "
                         f"known: {sorted(FIXED_N_METHOD_POLICY)}")
    style = {m: policy_style(p) for m, p in FIXED_N_METHOD_POLICY.items()}
    for ax, ds in zip(axes[0], datasets):
        sub = curves[curves["dataset"] == ds]
        for method in [m for m in FIXED_N_METHOD_POLICY if m in set(sub["method"])]:
            g, st = sub[sub["method"] == method].sort_values("N"), style[method]
            ax.plot(g["N"], g["accuracy"], marker=st["marker"], ms=4 * st["size"], mec=MARKER_EDGE, mew=0.5,
                    label=method, color=st["color"])
            ax.fill_between(g["N"], g["ci_low"], g["ci_high"], alpha=0.15, color=st["color"])
        ax.set_xscale("log", base=2)
        ax.set_title(ds)
        ax.set_xlabel("N (samples per question)")
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_score_histograms(pools: dict[str, Pool], scorers: list[str]) -> plt.Figure:
    """Score distributions of correct vs wrong samples, rows = scorers, columns = datasets."""
    fig, axes = plt.subplots(len(scorers), len(pools), figsize=(3.0 * len(pools), 2.4 * len(scorers)),
                             squeeze=False)
    for i, sc in enumerate(scorers):
        for j, (ds, pool) in enumerate(pools.items()):
            ax = axes[i][j]
            col = f"score__{sc}"
            if col not in pool.df:
                ax.set_axis_off()
                continue
            df = pool.df[[col, "correct"]].rename(columns={col: "score"})
            bins = np.linspace(0, 1, 26)
            for ok, color in ((False, "tab:red"), (True, "tab:green")):
                x = df.loc[df["correct"] == ok, "score"]
                if len(x):
                    ax.hist(x, bins=bins, alpha=0.55, density=True, color=color,
                            label=f"{'correct' if ok else 'wrong'} (n={len(x)})")
            ax.set_title(f"{ds}: {sc}", fontsize=8)
            ax.legend(fontsize=6)
            ax.set_xlabel("score")
    fig.tight_layout()
    return fig
