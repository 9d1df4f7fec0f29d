"""Build notebooks/10_verifier_axis.ipynb (run from the project root: python scripts/build_notebook_10.py)."""
import nbformat as nbf

from optscale.notebook import write_built_notebook

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
md("""# 10 · The verifier axis: where does OptScale pay?

On the CPU pools OptScale mostly does not save tokens at BoN's accuracy (notebook 05), while the
paper, with a PRM whose within-question AUROC is about 0.99, reports 37–62% fewer tokens. Is that
the method or the verifier? This notebook sweeps the verifier's quality on **semi-synthetic
scores**: every real committed pool keeps its correctness, answers and token counts, and its
scores are replaced by i.i.d. draws of a controlled within-question AUROC (the binormal model,
latent `z = d·correct + ε + τ·h_q`, AUROC = Φ(d/√2)), at AUROC 0.50 … 0.99 and several seeds.
The per-question shift `h_q` follows the question's pass rate (a PRM scores a hard question's
samples lower, right or wrong) or, as a control, is independent of difficulty; its scale `τ`
matches the paper's between-question share of score variance, and the scores are quantile-mapped
onto the paper's PRM scores (rebuilt from its released per-question truncated-normal fits), so
they are shaped like real PRM scores. Every policy is replayed with notebook 05's cross-fitted
protocol (`evaluate_config`, `savings_table`; settings `evaluation.sweep_*`). See
`optscale.evaluation.verifier_sweep` for every assumption.

It answers: the sanity rows (at AUROC 0.5 BoN@n is a random pick, at 0.99 close to pass@n), per
policy tokens saved and accuracy − BoN@n against AUROC, the break-even AUROC above which
OptScale⁰ / OptScaleᵗ save more than the best vote policy at non-inferiority and the AUROC above
which they reach the paper's 37%, and the model check: at each real scorer's measured AUROC, does
the sweep predict the real scorer's tokens saved and accuracy gap (inside its CI)?

The last section reproduces the paper's token column from its released fits (issue 28 item 3).
Nothing here is a result on real verifier scores: every sweep table and figure says
"semi-synthetic"."""),
code('''profile: str = "cpu-1.5b"  # profile in profiles/
run_dir: str = "outputs/dev"  # where figures/tables go
overrides: str = ""  # comma-separated dotted overrides, e.g. evaluation.sweep_seeds=1''', metadata={"tags": ["parameters"]}),
code('''from optscale import setup_notebook
cfg, run = setup_notebook(profile, run_dir, overrides, notebook="10_verifier_axis")
e = cfg.evaluation
print(cfg.profile, run, "| sweep:", e.sweep_aurocs, f"{e.sweep_seeds} seed(s)", e.sweep_shift_modes,
      "pool sets:", e.sweep_pool_sets or (cfg.pools.pool_name,))'''),
md("## The sweep (semi-synthetic binormal scores on the real pools)"),
code('''import time
import pandas as pd
from optscale import run_verifier_sweep, save_table

t0 = time.time()
sweep, sweep_per_seed, sweep_notes = run_verifier_sweep(cfg, run)
sweep_seconds = time.time() - t0
save_table(sweep, run, "verifier_sweep")
save_table(sweep_per_seed, run, "verifier_sweep_per_seed")
save_table(pd.DataFrame({"note": sweep_notes}), run, "verifier_sweep_notes")
print(f"sweep: {len(sweep)} rows, {len(sweep_per_seed)} per-seed rows in {sweep_seconds:.0f} s")
print("\\n".join(sweep_notes))'''),
md("### Sanity: at AUROC 0.5 BoN@n is a random answered sample, at 0.99 close to pass@n"),
code('''from optscale import sweep_sanity

sanity = sweep_sanity(sweep, low=min(e.sweep_aurocs), high=max(e.sweep_aurocs))
save_table(sanity, run, "verifier_sweep_sanity")
sanity'''),
md("### Per policy: tokens saved and accuracy − BoN@n against the AUROC (semi-synthetic)"),
code('''from optscale import sweep_curves

cols = ["pool_set", "benchmark", "shift_mode", "auroc_target", "policy", "auroc_measured", "acc_minus_bon",
        "acc_minus_bon_lo", "acc_minus_bon_hi", "tokens_saved", "tokens_saved_lo", "tokens_saved_hi", "non_inferior",
        "non_inferior_share", "bon_acc", "single_acc", "pass_at_n", "scores"]
display(sweep_curves(sweep, "tokens_saved").round(3))
display(sweep_curves(sweep, "acc_minus_bon").round(3))
sweep[cols].round(4)'''),
md("""### Break-even AUROC

The AUROC above which OptScale (⁰, ᵗ, sequential) is non-inferior to BoN@n and saves more tokens than the best vote
policy that is non-inferior at the same AUROC (BoN itself when none is), and the AUROC above which
it saves the paper's 37% at non-inferiority (linear interpolation between swept levels; None:
never within the sweep)."""),
code('''from optscale import break_even_aurocs

break_even = break_even_aurocs(sweep)  # OptScale⁰, OptScaleᵗ and sequential OptScale
save_table(break_even, run, "verifier_sweep_break_even")
break_even'''),
md("""### The model against reality

The real scorers' points (notebook 06's `verifier_auroc` table when this run has it, else
computed here for the swept pool sets): at each real scorer's measured within-question AUROC the
sweep's tokens saved and accuracy gap of the same policy on the same pool, interpolated, and
whether they fall inside the real scorer's CI. Where they do not, real scores differ from the
binormal model in more than their AUROC (their shape, ties, per-question calibration). Beside them
each real scorer's BoN@n and the sweep's at the same AUROC: a scorer that mostly finds the clearly
wrong samples reaches a high AUROC yet picks its top sample no better than a weaker one, so its BoN
baseline is lower than the binormal model's and the policies' gaps to it look better."""),
code('''from optscale import sweep_model_check, verifier_auroc_points

sets = sorted(set(sweep["pool_set"])) if len(sweep) else []
real_path = run / "tables" / "verifier_auroc.csv"
points = pd.read_csv(real_path) if real_path.is_file() and real_path.stat().st_size > 1 else pd.DataFrame()
if len(points):
    points = points[points["pool_set"].isin(sets)]
if sets and (not len(points) or set(points["pool_set"]) != set(sets)):
    points, _ = verifier_auroc_points(cfg.replace({"evaluation": {"auroc_pool_sets": sets}}), run, verbose=False)
model_check = sweep_model_check(sweep, points) if len(points) else pd.DataFrame()
save_table(model_check, run, "verifier_sweep_model_check")
model_check'''),
md("### Figure: tokens saved and accuracy − BoN against AUROC, real scorers overlaid"),
code('''from optscale import plot_verifier_auroc, plot_verifier_sweep, save_figure, verifier_auroc_caption, verifier_sweep_caption

if len(sweep):
    fig = plot_verifier_sweep(sweep, points if len(points) else None, e.noninferiority_margin,
                              title="How good must the verifier be?")
    save_figure(fig, run, "verifier_sweep", caption=verifier_sweep_caption(sweep, cfg, sweep_notes))
if len(sweep) and len(points):
    # notebook 06's verifier-AUROC figure with this notebook's full sweep beside the real points
    fig = plot_verifier_auroc(points, e.noninferiority_margin, sweep=sweep[sweep["policy"] == e.auroc_policy],
                              title=f"{e.auroc_policy} vs BoN: real scorers and the semi-synthetic sweep")
    save_figure(fig, run, "verifier_auroc_with_sweep",
                caption=verifier_auroc_caption(points, cfg) + " Grey: " + verifier_sweep_caption(sweep, cfg))'''),
md("### What the scores were calibrated to"),
code('''from optscale import sweep_calibration

calibration = sweep_calibration(sweep, cfg.data.data_dir) if len(sweep) else pd.DataFrame()
save_table(calibration, run, "verifier_sweep_calibration")
calibration'''),
md("""## The paper's token column from its own released numbers (issue 28 item 3)

>>> ITEM 3 CELL: `optscale.evaluation.paper_tokens.paper_regime_tokens` computes N* per question
from the released fits with the workbook's bound at every grid setting, with and without the
length-difficulty correction measured on our pools, and writes `tables/paper_regime_tokens.csv`.
(Real released numbers, not semi-synthetic.)"""),
code('''# >>> ITEM 3: the paper's token column (optscale.evaluation.paper_tokens)
from optscale.evaluation.paper_tokens import best_matching_settings, paper_regime_tokens

t1 = time.time()
paper_tokens = paper_regime_tokens(cfg.data.data_dir)
save_table(paper_tokens, run, "paper_regime_tokens")
matching = best_matching_settings(paper_tokens)
save_table(matching, run, "paper_regime_tokens_matching")
print(f"paper_regime_tokens: {len(paper_tokens)} rows in {time.time() - t1:.0f} s")
display(matching)
paper_tokens.head(20)'''),
code('''print(f"notebook 10: sweep {sweep_seconds:.0f} s; settings orders={int(sweep['orders'].iloc[0]) if len(sweep) else '-'}, "
      f"tune_orders={int(sweep['tune_orders'].iloc[0]) if len(sweep) else '-'}, jobs={e.sweep_jobs}")'''),
]
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
write_built_notebook(nb, "notebooks/10_verifier_axis.ipynb")
