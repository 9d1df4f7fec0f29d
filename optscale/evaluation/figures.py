"""Paper figures from evaluation outputs. Every ``plot_*`` takes tables produced by
:mod:`optscale.evaluation` and returns a matplotlib Figure; saving is
:func:`optscale.provenance.save_figure`'s job."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["plot_pareto", "plot_savings", "plot_verifier_auroc", "plot_verifier_sweep"]

_MARKERS = "osD^v<>PXh*p8d"


def plot_pareto(summary: pd.DataFrame, curves: pd.DataFrame, title: str = "", ax=None):
    """Accuracy vs mean tokens per question: one point per policy with bootstrap CI bars in both
    directions, the BoN curve (N = 1..max_N) and the oracle frontier, with their CI bands. Each
    policy in its style (:mod:`optscale.evaluation.policy_styles`: hue by family, a marker of its
    own), the legend grouped by family; policies at nearly the same place are set 7 pt apart.

    ``summary``: rows of :attr:`Evaluation.summary` for one dataset; ``curves``:
    :func:`optscale.evaluation.runner.curve_table` for the same dataset."""
    from matplotlib.transforms import offset_copy

    from .policy_styles import MARKER_EDGE, darker, family_legend, policy_order, policy_style

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7.4, 4.2))
    # the curves in their policy's colour: BoN@max_N sits at the end of the BoN curve
    styles = {"bon": ("BoN curve (N=1..max)", "-", policy_style("bon")["color"]),
              "oracle": ("oracle frontier", "--", policy_style("oracle")["color"])}
    curve_lines = []
    for name, g in curves.groupby("curve"):
        g = g.sort_values("N")
        label, ls, color = styles.get(name, (name, "-", "0.5"))
        curve_lines += ax.plot(g["tokens"], g["accuracy"], ls, color=color, lw=1.1, label=label, zorder=1)
        ax.fill_between(g["tokens"], g["accuracy_lo"], g["accuracy_hi"], color=color, alpha=0.1, lw=0)
    twice = sorted(set(summary.loc[summary["policy"].duplicated(), "policy"]))
    if twice:
        raise ValueError(f"plot_pareto: summary has more than one row for policy {', '.join(twice)}; "
                         "pass the rows of one dataset and protocol")
    rows = summary.set_index("policy")
    names = policy_order(rows.index)
    # policies at (nearly) the same place, e.g. DSC falling back to the full vote at majority's
    # tokens, are set side by side, 7 pt apart, so that no marker hides another
    xs, ys = rows.loc[names, "tokens"].to_numpy(float), rows.loc[names, "accuracy"].to_numpy(float)
    span_x = np.ptp(np.r_[xs, curves["tokens"].to_numpy(float)]) if len(curves) else np.ptp(xs)
    span_y = np.ptp(np.r_[ys, curves["accuracy"].to_numpy(float)]) if len(curves) else np.ptp(ys)
    near_x, near_y = 0.025 * (span_x or 1.0), 0.025 * (span_y or 1.0)  # about 1.5 marker widths
    group = list(range(len(names)))
    for i in range(len(names)):
        group[i] = next((group[j] for j in range(i)
                         if abs(xs[i] - xs[j]) <= near_x and abs(ys[i] - ys[j]) <= near_y), i)
    shift = {}
    for gid in set(group):
        members = sorted((i for i, g in enumerate(group) if g == gid), key=lambda i: (xs[i], i))  # keep x order
        shift.update({i: 7.0 * (k - (len(members) - 1) / 2) for k, i in enumerate(members)})
    for i, name in enumerate(names):
        r, st = rows.loc[name], policy_style(name)
        ax.errorbar(r.tokens, r.accuracy, yerr=[[r.accuracy - r.accuracy_lo], [r.accuracy_hi - r.accuracy]],
                    xerr=[[r.tokens - r.tokens_lo], [r.tokens_hi - r.tokens]], fmt="", ls="none", marker=st["marker"],
                    color=st["color"], ecolor=darker(st["color"], 0.25), mec=MARKER_EDGE, mew=0.6, ms=6.5 * st["size"],
                    capsize=2, lw=0.8, label=name, zorder=3,
                    transform=offset_copy(ax.transData, fig=fig, x=shift[i], units="points"))
    ax.margins(x=0.07)  # room for the points set side by side
    ax.set_xlabel("mean tokens per question")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    # grouped by policy family, outside the axes, so that no point or CI bar is hidden behind it
    family_legend(ax, names, extra=curve_lines, fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
    fig.tight_layout()
    return fig


def plot_savings(savings: pd.DataFrame, title: str = ""):
    """Tokens saved vs BoN@max_N per policy and dataset (bars with bootstrap CIs); policies
    whose accuracy is not shown non-inferior to BoN (``non_inferior``; tables without it:
    ``matches_bon``, equivalence) are hatched."""
    from matplotlib.patches import Patch

    from .policy_styles import MARKER_EDGE, darker, family_legend, greyscale, policy_order, policy_style

    s = savings[~savings["policy"].isin(["bon"])].copy()
    # hatch what is not shown non-inferior to BoN (older tables: not shown equivalent)
    flag, what = ("non_inferior", "not shown non-inferior to BoN") if "non_inferior" in s else \
        ("matches_bon", "not shown equivalent to BoN")
    datasets = list(dict.fromkeys(s["dataset"]))
    policies = policy_order(s["policy"])
    # one panel per dataset; bars in their policy's colour with its marker at the tip (the policy
    # reads in greyscale too); about 0.3 in per bar, at most 13 in wide
    width = min(13.0, max(6.0, 0.3 * len(policies) + 3.0))
    fig, axes = plt.subplots(max(1, len(datasets)), 1, squeeze=False, sharex=True,
                             figsize=(width, 2.3 * max(1, len(datasets)) + 0.9))
    x = np.arange(len(policies))
    styles = [policy_style(p) for p in policies]
    for ax, ds in zip(axes[:, 0], datasets):
        g = s[s["dataset"] == ds].set_index("policy").reindex(policies)
        err = np.vstack([g["saved"] - g["saved_lo"], g["saved_hi"] - g["saved"]])
        bars = ax.bar(x, 100 * g["saved"], 0.7, yerr=100 * np.nan_to_num(err), capsize=2,
                      color=[st["color"] for st in styles], edgecolor=[darker(st["color"], 0.45) for st in styles],
                      lw=0.6, error_kw={"lw": 0.8, "ecolor": "0.2"}, zorder=2)
        for b, st, ok in zip(bars, styles, g[flag].fillna(False).astype(bool)):
            if not ok:  # hatch overlaid in white on dark bars, in dark grey on light ones
                ax.bar(b.get_x(), b.get_height(), b.get_width(), align="edge", facecolor="none", lw=0, hatch="//",
                       edgecolor="white" if greyscale(st["color"]) < 0.45 else "0.25", zorder=2.5)
        for xi, st, v in zip(x, styles, 100 * g["saved"]):
            if np.isfinite(v):
                ax.plot([xi], [v], ls="none", marker=st["marker"], color=st["color"], mec=MARKER_EDGE, mew=0.6,
                        ms=6 * st["size"], zorder=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(ds, fontsize=8, loc="left")
        ax.set_ylabel("tokens saved vs\nBoN@max_N (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels(policies, rotation=40, ha="right", fontsize=8)
    fig.suptitle(title + ("\n" if title else "") + f"hatched: accuracy {what} (paired bootstrap)", fontsize=8)
    hatch = Patch(facecolor="white", edgecolor="0.3", hatch="//", label=f"accuracy {what}")
    family_legend(fig, policies, extra=[hatch], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95),
                  frameon=False)
    fig.tight_layout()
    return fig


def plot_verifier_auroc(points: pd.DataFrame, ni_margin: float | None = None, title: str = "",
                        sweep: pd.DataFrame | None = None):
    """How good must the verifier be? x: the verifier's within-question AUROC (bootstrap CI over
    questions); y, top row: OptScale's tokens saved vs BoN@max_N (%), bottom row: its accuracy
    minus BoN@max_N's (paired bootstrap CI), both from the cross-fitted evaluation. One column per
    benchmark, one point per (pool set, scorer): colour = scorer, marker = pool set; error bars
    are two-sided CIs; a filled marker is non-inferior to BoN. Vertical lines: chance (0.5) and
    the within-question AUROC of the token count alone (the baseline a verifier must beat).

    ``points``: :func:`optscale.evaluation.verifier_auroc.verifier_auroc_points`; ``ni_margin`` draws the
    non-inferiority margin (−margin) on the accuracy row. ``sweep``
    (:func:`optscale.evaluation.verifier_sweep.aggregate_sweep`, SEMI-SYNTHETIC scores) adds, per pool
    set, the sweep's curve of the points' policy against the AUROC measured on the draws (grey, the
    pool set's marker, solid: shift following difficulty, dotted: independent; band: mean per-seed CI)."""
    datasets = list(dict.fromkeys(points["dataset"]))
    ncol = max(1, len(datasets))
    fig, axes = plt.subplots(2, ncol, figsize=(3.3 * ncol + 1.9, 5.6), squeeze=False, sharex=True)
    scorers = sorted(set(points["scorer"]))
    sets = list(dict.fromkeys(points["pool_set"]))
    pal = dict(zip(scorers, plt.get_cmap("tab10").colors))
    mk = dict(zip(sets, _MARKERS))
    shown = "/".join(dict.fromkeys(points["policy"])) if "policy" in points else "OptScale"  # the policy plotted
    for j, ds in enumerate(datasets):
        g = points[points["dataset"] == ds]
        for row, (col, scale, label) in enumerate((("saved", 100.0, f"{shown}: tokens saved vs BoN (%)"),
                                                   ("acc_diff", 1.0, f"{shown} accuracy − BoN accuracy"))):
            ax = axes[row][j]
            if sweep is not None and len(sweep):
                scol = {"saved": "tokens_saved", "acc_diff": "acc_minus_bon"}[col]
                sw = sweep[(sweep["benchmark"] == ds) & sweep["policy"].isin(set(g["policy"]))]
                for (ps, mode), m in sw.groupby(["pool_set", "shift_mode"], sort=False):
                    m = m.sort_values("auroc_target")
                    x = m["auroc_measured"].to_numpy(float)
                    ax.plot(x, scale * m[scol], "-" if mode == "difficulty" else ":", color="0.45", lw=1.0,
                            marker=mk.get(ps, "."), ms=3, mfc="0.45", mec="0.45", zorder=2)
                    if mode == "difficulty":
                        ax.fill_between(x, scale * m[f"{scol}_lo"], scale * m[f"{scol}_hi"], color="0.5", alpha=0.1,
                                        lw=0, zorder=1)
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
    if sweep is not None and len(sweep):
        handles += [Line2D([], [], ls="-", color="0.45", label="semi-synthetic sweep\n(binormal scores; dotted:\nshift independent of difficulty)")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_verifier_sweep(table: pd.DataFrame, points: pd.DataFrame | None = None, ni_margin: float | None = None,
                        policies: Sequence[str] | None = None, title: str = ""):
    """The verifier-quality sweep (SEMI-SYNTHETIC scores): x: the within-question AUROC measured on
    the binormal draws; top row: tokens saved vs BoN@max_N (%), bottom row: accuracy minus
    BoN@max_N's, one line per policy (colour and marker of its family,
    :mod:`optscale.evaluation.policy_styles`), one column per (pool set, benchmark). Solid: the
    shift following difficulty, dotted: independent of it (OptScale policies only); filled marker =
    non-inferior in most seeds; band: the mean per-seed CI of OptScale⁰; shaded: the non-inferior
    region (accuracy − BoN above −``ni_margin``). ``points``
    (:func:`optscale.evaluation.verifier_auroc.verifier_auroc_points`) overlays the real scorers in
    black with their CIs.

    ``table``: :func:`optscale.evaluation.verifier_sweep.aggregate_sweep`; ``policies``: default
    every policy in it but BoN and the oracle."""
    from matplotlib.lines import Line2D

    from .policy_styles import MARKER_EDGE, family_legend_handles, policy_order, policy_style

    names = policy_order([p for p in (policies or table["policy"].unique()) if p not in ("bon",) and
                          (policies is not None or p != "oracle")])
    # pools whose AUROC is undefined (no question with both a correct and a wrong sample) are left out
    defined = table.groupby(["pool_set", "benchmark"], sort=False)["auroc_measured"].transform(lambda v: v.notna().any())
    table = table[defined.astype(bool)]
    panels = list(dict.fromkeys(zip(table["pool_set"], table["benchmark"])))
    ncol = max(1, len(panels))
    fig, axes = plt.subplots(2, ncol, figsize=(3.2 * ncol + 2.2, 5.8), squeeze=False, sharex=True)
    modes = list(dict.fromkeys(table["shift_mode"]))
    main = "difficulty" if "difficulty" in modes else modes[0]
    for j, (ps, ds) in enumerate(panels):
        g = table[(table["pool_set"] == ps) & (table["benchmark"] == ds)]
        for row, (col, scale) in enumerate((("tokens_saved", 100.0), ("acc_minus_bon", 1.0))):
            ax = axes[row][j]
            for mode in modes:
                for name in names:
                    if mode != main and name not in ("optscale-0", "optscale-t", "optscale-seq"):
                        continue
                    m = g[(g["shift_mode"] == mode) & (g["policy"] == name)].sort_values("auroc_target")
                    if not len(m):
                        continue
                    st = policy_style(name)
                    x, y = m["auroc_measured"].to_numpy(float), scale * m[col].to_numpy(float)
                    ls, lw = ("-", 1.2) if mode == main else (":", 1.0)
                    ax.plot(x, y, ls, color=st["color"], lw=lw, zorder=2)
                    if mode == main:
                        ni = m["non_inferior"].astype(bool).to_numpy()
                        ax.scatter(x[ni], y[ni], marker=st["marker"], color=st["color"], edgecolor=MARKER_EDGE,
                                   lw=0.5, s=22 * st["size"], zorder=3)
                        ax.scatter(x[~ni], y[~ni], marker=st["marker"], facecolor="white", edgecolor=st["color"],
                                   lw=0.9, s=22 * st["size"], zorder=3)
                        if name == "optscale-0":
                            ax.fill_between(x, scale * m[f"{col}_lo"], scale * m[f"{col}_hi"], color=st["color"],
                                            alpha=0.12, lw=0, zorder=1)
            if points is not None and len(points):
                real_col = {"tokens_saved": "saved", "acc_minus_bon": "acc_diff"}[col]
                p = points[(points["pool_set"] == ps) & (points["dataset"] == ds)]
                for r in p.itertuples():
                    y, lo, hi = (scale * getattr(r, real_col), scale * getattr(r, f"{real_col}_lo"),
                                 scale * getattr(r, f"{real_col}_hi"))
                    ax.errorbar(r.auroc_within, y, xerr=[[r.auroc_within - r.auroc_within_lo],
                                                         [r.auroc_within_hi - r.auroc_within]],
                                yerr=[[y - lo], [hi - y]], fmt="*", color="k", mfc="k" if r.non_inferior else "white",
                                ms=8, capsize=2, lw=0.8, zorder=4)
                    ax.annotate(r.scorer, (r.auroc_within, y), fontsize=5.5, xytext=(3, 3), textcoords="offset points")
            ax.axhline(0, color="k", lw=0.6, zorder=1)
            ax.axvline(0.5, color="0.5", lw=0.7, ls=":", zorder=1)
            if row == 1 and ni_margin:  # the non-inferior region, without moving the limits
                lo, hi = ax.get_ylim()
                ax.axhspan(-ni_margin, max(hi, 0.0), color="tab:green", alpha=0.08, lw=0, zorder=0)
                ax.axhline(-ni_margin, color="tab:red", lw=0.8, ls="--", zorder=1)
                ax.set_ylim(min(lo, -ni_margin), hi)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("tokens saved vs BoN@max_N (%)" if row == 0 else "accuracy − BoN@max_N", fontsize=8)
            if row == 0:
                n = int(g["n"].iloc[0])
                ax.set_title(f"{ds} (BoN@{n}), {ps}", fontsize=7)
            else:
                ax.set_xlabel("within-question AUROC (semi-synthetic scores, measured)", fontsize=7)
    handles = family_legend_handles(names)
    handles += [Line2D([], [], color="0.3", ls="-", label=f"shift: {main}")]
    handles += [Line2D([], [], color="0.3", ls=":", label=f"shift: {m} (OptScale)") for m in modes if m != main]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label="hollow: not non-inferior")]
    if ni_margin:
        from matplotlib.patches import Patch

        handles += [Patch(facecolor="tab:green", alpha=0.2, label=f"non-inferior region (≥ −{ni_margin:g})")]
    if points is not None and len(points):
        handles += [Line2D([], [], ls="", marker="*", color="k", ms=8, label="real scorer (OptScale⁰)")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=6.5, frameon=False)
    fig.suptitle((title + "\n" if title else "") + "SEMI-SYNTHETIC scores (binormal) on real pools", fontsize=9)
    fig.tight_layout()
    return fig
