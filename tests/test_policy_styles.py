"""The one policy -> (family, colour, marker) mapping and the figures that draw with it."""

import colorsys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.container import BarContainer

from optscale.evaluation.figures import plot_pareto, plot_savings
from optscale.evaluation.policy_styles import (FAMILY_TITLES, FIXED_N_METHOD_POLICY, POLICY_FAMILIES, POLICY_STYLES,
                                                family_legend_handles, policy_order, policy_style)
from optscale.policies import POLICIES

# the module defining a policy decides its family
MODULE_FAMILY = {"optscale.policies.fixed": "fixed", "optscale.policies.voting": "vote",
                 "optscale.policies.score_distribution": "score-distribution"}


def _grey(color) -> float:
    r, g, b = to_rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _workbook_policies() -> list[str]:
    """The registered policies the package defines (tests may register extra ones, e.g. a spy)."""
    return [n for n in POLICIES.names() if POLICIES.get(n).__module__.startswith("optscale.")]


def test_every_registered_policy_has_a_style_and_nothing_else_does():
    assert set(POLICY_STYLES) == set(_workbook_policies())
    assert len(POLICY_STYLES) == 14
    for name in _workbook_policies():
        st = policy_style(name)
        assert set(st) == {"family", "color", "marker", "size"}
        assert st["family"] in POLICY_FAMILIES and name in POLICY_FAMILIES[st["family"]]


def test_families_are_the_modules_that_define_the_policies():
    for name in _workbook_policies():
        assert policy_style(name)["family"] == MODULE_FAMILY[POLICIES.get(name).__module__], name
    assert sorted(n for names in POLICY_FAMILIES.values() for n in names) == sorted(_workbook_policies())
    assert set(FAMILY_TITLES) == set(POLICY_FAMILIES)


def test_styles_are_pairwise_distinct_in_colour_and_marker():
    colours = [to_hex(s["color"]) for s in POLICY_STYLES.values()]
    markers = [s["marker"] for s in POLICY_STYLES.values()]
    assert len(set(colours)) == len(colours)
    assert len(set(markers)) == len(markers)  # so every policy also reads in greyscale


def test_one_hue_per_family_and_greyscale_steps_within_a_family():
    hues = {}
    for family, names in POLICY_FAMILIES.items():
        h = [360 * colorsys.rgb_to_hls(*to_rgb(POLICY_STYLES[n]["color"]))[0] for n in names]
        assert max(h) - min(h) <= 30, (family, h)  # one hue family
        hues[family] = np.mean(h)
        grey = sorted(_grey(POLICY_STYLES[n]["color"]) for n in names)
        assert np.diff(grey).min() >= 0.1, (family, grey)
        assert 0.1 <= grey[0] and grey[-1] <= 0.85  # none black, none lost on white paper
    fams = list(hues)
    for i in range(len(fams)):
        for j in range(i):
            d = abs(hues[fams[i]] - hues[fams[j]])
            # blues (~210 deg) and teals (~170 deg) are the closest pair: greener teals would turn olive,
            # like the oranges, under deuteranopia
            assert min(d, 360 - d) >= 35, (fams[i], fams[j])


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(KeyError, match="policy 'best-of-n' has no figure style"):
        policy_style("best-of-n")
    with pytest.raises(KeyError, match="'nope'"):
        policy_order(["bon", "nope"])


def test_policy_order_and_legend_handles_group_by_family():
    assert policy_order(["ias", "bon", "esc", "oracle", "bon"]) == ["bon", "oracle", "esc", "ias"]
    labels = [h.get_label() for h in family_legend_handles(["ias", "esc", "bon"])]
    assert labels == [FAMILY_TITLES["fixed"], "bon", FAMILY_TITLES["vote"], "esc",
                      FAMILY_TITLES["score-distribution"], "ias"]


def _summary(names, at=None):
    rng = np.random.default_rng(0)
    acc, tok = rng.uniform(0.5, 0.9, len(names)), rng.uniform(500, 5000, len(names))
    for name, (t, a) in (at or {}).items():
        tok[names.index(name)], acc[names.index(name)] = t, a
    return pd.DataFrame({"policy": names, "accuracy": acc, "accuracy_lo": acc - 0.02, "accuracy_hi": acc + 0.02,
                         "tokens": tok, "tokens_lo": tok - 50, "tokens_hi": tok + 50})


def _curves():
    N = np.arange(1, 5)
    return pd.concat([pd.DataFrame({"curve": c, "N": N, "tokens": 400.0 * N, "accuracy": a, "accuracy_lo": a - 0.02,
                                    "accuracy_hi": a + 0.02})
                      for c, a in (("bon", 0.5 + 0.03 * N), ("oracle", 0.5 + 0.1 * N))], ignore_index=True)


def test_pareto_draws_each_policy_in_its_own_style_with_a_family_legend():
    names = ["deepconf", "bon", "optscale-0", "esc", "ias", "majority", "oracle"]
    fig = plot_pareto(_summary(names), _curves(), title="toy")
    ax = fig.axes[0]
    drawn = {c.get_label(): c.lines[0] for c in ax.containers}  # one errorbar container per policy
    assert set(drawn) == set(names)
    for name, line in drawn.items():
        st = policy_style(name)
        assert line.get_marker() == st["marker"], name
        assert to_hex(line.get_markerfacecolor()) == to_hex(st["color"]), name
    looks = [(str(line.get_marker()), to_hex(line.get_markerfacecolor())) for line in drawn.values()]
    assert len(set(looks)) == len(looks)
    # the BoN curve in BoN's colour
    bon_curve = next(line for line in ax.lines if line.get_label().startswith("BoN curve"))
    assert to_hex(bon_curve.get_color()) == to_hex(policy_style("bon")["color"])
    # legend: family headings (bold) each followed by its policies, then the curves
    texts = ax.get_legend().get_texts()
    assert [t.get_text() for t in texts] == [FAMILY_TITLES["fixed"], "bon", "majority", "oracle",
                                             FAMILY_TITLES["vote"], "esc", "deepconf",
                                             FAMILY_TITLES["score-distribution"], "optscale-0", "ias",
                                             "BoN curve (N=1..max)", "oracle frontier"]
    assert [t.get_fontweight() == "bold" for t in texts] == [t.get_text() in FAMILY_TITLES.values() for t in texts]


def test_pareto_sets_coinciding_policies_side_by_side():
    names = ["bon", "majority", "dsc", "esc"]
    fig = plot_pareto(_summary(names, at={"majority": (3000.0, 0.7), "dsc": (3000.0, 0.7)}), _curves())
    ax = fig.axes[0]
    fig.canvas.draw()
    at = {c.get_label(): c.lines[0].get_transform().transform(c.lines[0].get_xydata())[0] for c in ax.containers}
    apart = (at["dsc"] - at["majority"]) * 72.0 / fig.dpi  # in points
    assert apart[0] == pytest.approx(7.0) and apart[1] == pytest.approx(0.0, abs=1e-6)
    # a policy elsewhere stays where its data put it
    esc = _summary(names).set_index("policy").loc["esc"]
    assert np.allclose(at["esc"], ax.transData.transform((esc.tokens, esc.accuracy)))


def test_pareto_rejects_two_rows_for_one_policy():
    s = _summary(["bon", "esc"])
    with pytest.raises(ValueError, match="more than one row for policy esc"):
        plot_pareto(pd.concat([s, s[s.policy == "esc"]]), _curves())


def test_savings_bars_take_the_policy_colours_in_family_order():
    names = ["ias", "esc", "majority", "optscale-t", "bon"]
    rows = [{"dataset": ds, "policy": p, "saved": 0.1 * (i + 1), "saved_lo": 0.05 * (i + 1), "saved_hi": 0.15 * (i + 1),
             "non_inferior": i % 2 == 0} for ds in ("gsm8k", "math500") for i, p in enumerate(names)]
    fig = plot_savings(pd.DataFrame(rows))
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == ["gsm8k", "math500"]
    shown = ["majority", "esc", "optscale-t", "ias"]  # BoN is the reference, not a bar
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == shown
    for ax in axes:
        bars = next(c for c in ax.containers if isinstance(c, BarContainer)).patches
        assert [to_hex(b.get_facecolor()) for b in bars] == [to_hex(policy_style(p)["color"]) for p in shown]
        assert {str(line.get_marker()) for line in ax.lines if line.get_marker() not in ("None", None)} >= \
            {str(policy_style(p)["marker"]) for p in shown}


def test_fixed_n_curves_figure_uses_the_fixed_policies_styles():
    from optscale.evaluation.pool_figures import plot_fixed_n_curves

    rows = [{"dataset": "gsm8k", "method": m, "N": n, "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6}
            for m in FIXED_N_METHOD_POLICY for n in (1, 2, 4)]
    ax = plot_fixed_n_curves(pd.DataFrame(rows)).axes[0]
    for line in ax.lines:
        st = policy_style(FIXED_N_METHOD_POLICY[line.get_label()])
        assert (line.get_marker(), to_hex(line.get_color())) == (st["marker"], to_hex(st["color"]))
    with pytest.raises(ValueError, match="no policy style"):
        plot_fixed_n_curves(pd.DataFrame([{**rows[0], "method": "beam"}]))
