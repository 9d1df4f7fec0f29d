"""One look per stopping policy, shared by every figure that shows policies.

The 14 registered policies fall into three families, by the module that defines them:

- ``fixed`` (:mod:`optscale.policies.fixed`): a fixed sample budget — BoN, majority, weighted vote,
  and the oracle (the physical limit);
- ``vote`` (:mod:`optscale.policies.voting`): stop when the answers' vote is settled — ESC, ASC,
  ConSol, OptPO, DSC, DeepConf;
- ``score-distribution`` (:mod:`optscale.policies.score_distribution`): stop from the verifier's
  score distribution — OptScale⁰, OptScaleᵗ, sequential OptScale, IAS.

Each family has one hue at several lightnesses — blues (ColorBrewer Blues), oranges to browns
(YlOrBr) and bluish greens (the teal side of BrBG) — that stay apart under deuteranopia and
protanopia (Machado et al. 2009's simulation: the blues stay blue, the oranges turn olive-yellow,
the teals grey). Within a family the greyscale values are at least 0.1 apart, and each policy has a
marker no other policy uses, so all 14 stay apart in greyscale print as well.
:func:`policy_style` gives a policy's ``color``, ``marker`` and ``family``;
:func:`family_legend` draws a legend grouped by family.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

__all__ = ["POLICY_FAMILIES", "FAMILY_TITLES", "POLICY_STYLES", "MARKER_EDGE", "FIXED_N_METHOD_POLICY",
           "policy_family", "policy_style", "policy_order", "greyscale", "darker", "family_legend_handles",
           "family_legend"]

#: family -> its policies, in the order figures list them (the mapping lives here: policies carry no
#: family attribute; tests/test_policy_styles.py checks it against the module defining each policy)
POLICY_FAMILIES: dict[str, tuple[str, ...]] = {
    "fixed": ("bon", "majority", "weighted-vote", "oracle"),
    "vote": ("esc", "asc", "consol", "optpo", "dsc", "deepconf"),
    "score-distribution": ("optscale-0", "optscale-t", "optscale-seq", "ias"),
}

#: family -> the heading of its group in a legend
FAMILY_TITLES: dict[str, str] = {
    "fixed": "fixed budget",
    "vote": "vote-based stopping",
    "score-distribution": "score-distribution stopping",
}

# Colour and marker per policy. Within a family the greyscale values (0.299 R + 0.587 G + 0.114 B)
# lie 0.1 or more apart, between about 0.15 and 0.8; markers are unique across all policies. Light
# colours get a dark edge (MARKER_EDGE).
_LOOKS: dict[str, tuple[str, Any]] = {
    # fixed: blues
    "bon": ("#08306b", "s"),
    "majority": ("#2171b5", "D"),
    "weighted-vote": ("#6baed6", "d"),
    "oracle": ("#4292c6", "*"),
    # vote: oranges to browns (ColorBrewer YlOrBr)
    "esc": ("#662506", "o"),
    "asc": ("#a63603", "^"),
    "consol": ("#ec7014", "v"),
    "optpo": ("#f59b3a", "<"),
    "dsc": ("#fdbf6f", ">"),
    "deepconf": ("#8c6d31", "h"),
    # score-distribution: bluish greens (BrBG's teal side: grey, not olive, under deuteranopia)
    "optscale-0": ("#004d40", "P"),
    "optscale-t": ("#1b9e77", "X"),
    "optscale-seq": ("#80cdc1", "p"),
    "ias": ("#00796b", (4, 1, 0)),  # four-pointed star
}

# thin markers (stars, the narrow diamond) are drawn larger, so that every marker covers about the same area
_SIZE = {"*": 1.4, (4, 1, 0): 1.4, "d": 1.15, "D": 0.85}

#: method of :func:`optscale.evaluation.curves.fixed_n_curves` -> the policy it is at a fixed N
#: (figures draw it in that policy's style)
FIXED_N_METHOD_POLICY: dict[str, str] = {"best-of-n": "bon", "majority": "majority",
                                         "weighted-majority": "weighted-vote"}

#: edge colour drawn round every policy marker (keeps light fills visible on white paper)
MARKER_EDGE = "0.15"

#: policy -> {"family", "color", "marker", "size"} (``size``: a factor on the figure's marker size),
#: in family order
POLICY_STYLES: dict[str, dict[str, Any]] = {
    name: {"family": family, "color": _LOOKS[name][0], "marker": _LOOKS[name][1],
           "size": _SIZE.get(_LOOKS[name][1], 1.0)}
    for family, names in POLICY_FAMILIES.items() for name in names
}


def _known(name: str) -> None:
    if name not in POLICY_STYLES:
        raise KeyError(f"policy {name!r} has no figure style; styled policies: {', '.join(POLICY_STYLES)} "
                       f"(add it to optscale/evaluation/policy_styles.py)")


def policy_family(name: str) -> str:
    """The family (``fixed`` | ``vote`` | ``score-distribution``) of policy ``name``."""
    _known(name)
    return POLICY_STYLES[name]["family"]


def policy_style(name: str) -> dict[str, Any]:
    """``{"family", "color", "marker", "size"}`` of policy ``name`` (a copy); KeyError naming the
    styled policies for a name without a style."""
    _known(name)
    return dict(POLICY_STYLES[name])


def greyscale(color: Any) -> float:
    """The grey value (0 black .. 1 white) ``color`` prints as: 0.299 R + 0.587 G + 0.114 B."""
    r, g, b = to_rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def darker(color: Any, amount: float = 0.3) -> tuple[float, float, float]:
    """``color`` mixed with black (``amount`` of black): error bars and bar edges of light colours
    that stay visible in greyscale print."""
    return tuple((1.0 - amount) * c for c in to_rgb(color))  # type: ignore[return-value]


def policy_order(names: Iterable[str]) -> list[str]:
    """``names`` (each once) sorted by family, then by their place in :data:`POLICY_FAMILIES`."""
    names = list(dict.fromkeys(names))
    for n in names:
        _known(n)
    rank = {n: i for i, n in enumerate(POLICY_STYLES)}
    return sorted(names, key=rank.__getitem__)


def family_legend_handles(names: Iterable[str], ms: float = 6.0) -> list[Line2D]:
    """Legend handles for ``names`` grouped by family: per family present, an empty heading handle
    (its label: :data:`FAMILY_TITLES`) followed by one marker handle per policy, in
    :func:`policy_order`."""
    ordered = policy_order(names)
    handles: list[Line2D] = []
    for family in POLICY_FAMILIES:
        members = [n for n in ordered if POLICY_STYLES[n]["family"] == family]
        if not members:
            continue
        handles.append(Line2D([], [], ls="", marker="", label=FAMILY_TITLES[family]))
        for n in members:
            s = POLICY_STYLES[n]
            handles.append(Line2D([], [], ls="", marker=s["marker"], color=s["color"], mec=MARKER_EDGE, mew=0.6,
                                  ms=ms * s["size"], label=n))
    return handles


def family_legend(target: Any, names: Iterable[str], extra: Sequence[Any] = (), ms: float = 6.0, **legend_kw: Any):
    """Draw on ``target`` (an Axes or a Figure) a legend of ``names`` grouped by family (headings in
    bold), followed by the ``extra`` handles (curves, hatching, ...). ``legend_kw`` go to
    ``target.legend``. Returns the Legend."""
    handles = family_legend_handles(names, ms) + list(extra)
    headings = set(FAMILY_TITLES.values())
    leg = target.legend(handles=handles, labels=[h.get_label() for h in handles], **legend_kw)
    for h, text in zip(handles, leg.get_texts()):
        if isinstance(h, Line2D) and h.get_marker() in ("", "None") and h.get_label() in headings:
            text.set_fontweight("bold")
    return leg
