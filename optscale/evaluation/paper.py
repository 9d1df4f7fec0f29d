"""The paper's reported table (from the data directory) side by side with ours.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["paper_comparison", "load_reported_table"]


PAPER_ROWS = {
    "bon": "Best-of-N (BoN)", "majority": "Self-Consistency", "esc": "Early-stopping SC (ESC)",
    "asc": "Adaptive SC (ASC)", "dsc": "Difficulty-Adaptive SC (DSC)", "optscale-0": "OptScale$^0$ (MLE) (Ours)",
    "optscale-t": "OptScale$^t$ (MAP) (Ours)",
}
PAPER_DATASETS = {"math500": "MATH500", "gsm8k": "GSM8K", "aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23"}


def load_reported_table(data_dir: str | Path | None = None) -> pd.DataFrame:
    """The paper's main table as long format: method, N, dataset, accuracy (fraction), tokens."""
    from ..data.benchmarks import resolve_data_dir

    path = resolve_data_dir(data_dir) / "reference" / "results_table.csv"
    raw = pd.read_csv(path)
    rows = []
    for _, r in raw.iterrows():
        label = str(r.iloc[0])
        if not label or label == "nan" or "($N=" not in label:
            continue
        method, nstr = label.rsplit(" ($N=", 1)
        N = int(nstr.rstrip(")$"))
        for key, ds in PAPER_DATASETS.items():
            acc, tok = r.get(f"{ds} acc."), r.get(f"{ds} token.")
            if pd.notna(acc):
                rows.append({"method": method.strip(), "N": N, "dataset": key, "accuracy": float(acc) / 100,
                             "tokens": float(tok)})
    if not rows:
        raise ValueError(f"{path}: no rows of the form '<method> ($N=<n>)'")
    return pd.DataFrame(rows)


def paper_comparison(summaries: pd.DataFrame, reported: pd.DataFrame, pool_label: str) -> pd.DataFrame:
    """Side by side: the paper's numbers ("reported", at the paper's N closest to ours) and ours
    ("reproduced on <pool_label>") for the policies the paper lists."""
    rows = []
    for _, s in summaries.iterrows():
        if s["policy"] not in PAPER_ROWS:
            continue
        rep = reported[(reported["method"] == PAPER_ROWS[s["policy"]]) & (reported["dataset"] == s["dataset"])]
        if len(rep):
            n_ours = int(s.get("max_N", 0) or 0)
            rep = rep.iloc[(rep["N"] - n_ours).abs().argsort()[:1]]
        rows.append({
            "dataset": s["dataset"], "method": PAPER_ROWS[s["policy"]],
            "reported_N": int(rep["N"].iloc[0]) if len(rep) else None,
            "reported_acc": float(rep["accuracy"].iloc[0]) if len(rep) else float("nan"),
            "reported_tokens": float(rep["tokens"].iloc[0]) if len(rep) else float("nan"),
            "ours_N": s.get("max_N"), "ours_acc": s["accuracy"], "ours_acc_ci": f"[{s['accuracy_lo']:.3f}, {s['accuracy_hi']:.3f}]",
            "ours_tokens": s["tokens"], "ours_tokens_ci": f"[{s['tokens_lo']:.0f}, {s['tokens_hi']:.0f}]",
            "ours_source": f"reproduced on {pool_label}",
        })
    return pd.DataFrame(rows)
