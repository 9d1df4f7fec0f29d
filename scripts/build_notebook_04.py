"""Writes notebooks/04_generator_study.ipynb (run once after editing; the notebook is committed)."""
import nbformat as nbf

from optscale.notebook import write_built_notebook

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md("""# 04 · Generator, prompt, decoding and verifier study

Which shipped generator, prompt, decoding and verifier give pools that can test OptScale's claim
(a verifier that ranks samples, Best-of-N above a single sample)? Each arm of
`data/study/arms.yaml` sampled the same study questions (positions 400+ of the seeded stratified
selection order, so never a pool question) with `python -m optscale.study run`; verifier columns
were added with `python -m optscale.study score`. This notebook reads those committed study pools:
accuracy, truncation, code-writing, tokens/s per arm, and per verifier the AUROC pooled and
within questions (what Best-of-N selection depends on), the token-count baseline, and BoN@n minus
single-sample accuracy, all with 95% bootstrap CIs over questions."""),
    code('''profile: str = "cpu-1.5b"  # profile in profiles/
run_dir: str = "outputs/dev"  # where figures/tables go
overrides: str = ""  # dotted overrides
arms: str = ""  # comma-separated arms, empty = every arm with samples''', metadata={"tags": ["parameters"]}),
    code('''from optscale import setup_notebook
cfg, run = setup_notebook(profile, run_dir, overrides, notebook="04_generator_study")
print(cfg.profile, run)'''),
    md("## Arms: accuracy, truncation, code, speed"),
    code('''from optscale import save_figure, save_table, plot_study, study_caption, study_table, verifier_table

names = arms.split(",") if arms else None
arm_table = study_table(names, reps=cfg.evaluation.bootstrap_reps, seed=cfg.evaluation.seed)
save_table(arm_table, run, "04_study_arms", latex=True)
arm_table'''),
    md("## Verifiers on each arm's samples"),
    code('''ver = verifier_table(names, reps=cfg.evaluation.bootstrap_reps, seed=cfg.evaluation.seed,
                     orders=cfg.pools.replay_orders)
save_table(ver, run, "04_study_verifiers", latex=True)
ver'''),
    code('''fig = plot_study(arm_table, ver)
save_figure(fig, run, "04_study", caption=study_caption(arm_table))
fig'''),
    md("""Read the within-question AUROC against the token-count baseline (open markers): a verifier
that does not beat "shorter is better" adds nothing a length cut-off would not, and a BoN gain
whose CI includes 0 means Best-of-N by that verifier is no better than one sample."""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
write_built_notebook(nb, "notebooks/04_generator_study.ipynb")
