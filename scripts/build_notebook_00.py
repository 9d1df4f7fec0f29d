import nbformat as nbf

from optscale.notebook import write_built_notebook
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
md("""# 00 · Data and pools

What the five benchmarks and the project's sample pools contain: benchmark sizes and gold
answers, a few live samples from the real CPU model, and for every pool the accuracy of a single
sample, Best-of-N / majority-vote / score-weighted-vote curves for N = 1…16 (averaged over seeded
random sample orders, with bootstrap CIs over questions), and score histograms of correct vs
wrong samples per scorer. Everything is computed by `optscale` (`optscale.evaluation.curves`,
`optscale.evaluation.pool_figures`); this notebook only calls it and saves figures and tables to the run
folder."""),
code('''profile: str = "cpu-1.5b"  # profile in profiles/
run_dir: str = "outputs/dev"  # where figures/tables go
overrides: str = ""  # dotted overrides, e.g. pools.replay_orders=50
scorer: str = ""  # scorer for Best-of-N, empty means each benchmark's primary scorer (scoring.primary_for)
max_N: int = 16  # largest N on the curves (capped at each pool's size)
live_questions: int = 1  # GSM8K questions sampled live from the CPU model, 0 skips''', metadata={"tags": ["parameters"]}),
code('''from optscale import setup_notebook
cfg, run = setup_notebook(profile, run_dir, overrides, notebook="00_data_and_pools")
print(cfg.profile, run)'''),
md("## Benchmarks"),
code('''import pandas as pd
from optscale import load_benchmark, resolve_data_dir, save_table

data_dir = resolve_data_dir(cfg.data.data_dir)
bench = {b: load_benchmark(b, data_dir) for b in cfg.data.benchmarks}
bench_table = pd.DataFrame([{"benchmark": b, "questions": len(ps), "used": cfg.data.max_questions[b] or len(ps),
                             "example gold answers": ", ".join(p.answer for p in ps[:4])} for b, ps in bench.items()])
save_table(bench_table, run, "00_benchmarks")
bench_table'''),
md("## Live samples from the CPU model\n\nA real generation with the profile's sampler, scored by every configured scorer and graded by math-verify: the same code path that produced the committed pools."),
code('''import time
from optscale import build_scorers, generate_pool, read_pool, get_sampler

if live_questions > 0:
    t0 = time.time()
    sampler = get_sampler(cfg.sampling.backend, cfg.sampling)
    scorers = build_scorers(cfg, sampler)
    live_path = generate_pool(cfg, "gsm8k", bench["gsm8k"][:live_questions], sampler, scorers,
                              path=run / "live_pool" / "gsm8k.parquet", progress=False)
    live = read_pool(live_path)
    elapsed = time.time() - t0
    toks = int(live.df["n_tokens"].sum())
    print(f"{live.describe()}\\n{toks} tokens in {elapsed:.0f} s including model load")
    display(live.df[["question_id", "sample_index", "answer", "gold", "correct", "n_tokens", "finish_reason"]
                    + [c for c in live.df if c.startswith("score__")]].head(8))
    print(live.df["text"].iloc[0][:1500])'''),
md("## The committed pools"),
code('''from optscale import pool_summary, pool_path

pools = {}
for b in cfg.data.benchmarks:
    path = pool_path(cfg, b)
    if not path.is_file():
        print(f"{b}: no pool at {path} yet, skipped")
        continue
    pool = read_pool(path, allow_partial_scores=True).fully_scored()
    limit = cfg.data.max_questions[b]
    pools[b] = pool.head(limit) if limit else pool
    print(pools[b].describe())
summary = pool_summary(pools)
save_table(summary, run, "00_pool_summary", latex=True)
summary'''),
code('''from optscale import fixed_n_curves, plot_fixed_n_curves, plot_score_histograms, pool_caption, replay_orders
from optscale import save_figure

scorer_of = {b: scorer or cfg.scoring.primary_for(b) for b in pools}
curves = []
for b, pool in pools.items():
    n_max = min(max_N, pool.n_per_question)
    ns = sorted({1, 2, 4, 8, 16, n_max} & set(range(1, n_max + 1)))
    orders = replay_orders(pool.n_questions, pool.n_per_question, cfg.pools.replay_orders, cfg.pools.replay_seed)
    curves.append(fixed_n_curves(pool, scorer_of[b], orders, ns, reps=cfg.evaluation.bootstrap_reps, seed=cfg.evaluation.seed))
curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
if len(curves):
    save_table(curves, run, "00_fixed_n_curves", latex=True)
    caption = pool_caption(pools, scorer_of) + f"; {cfg.pools.replay_orders} random orders, {cfg.evaluation.bootstrap_reps} bootstrap resamples"
    fig = plot_fixed_n_curves(curves, title=caption[:160])
    save_figure(fig, run, "00_bon_majority_curves", caption=caption)
curves.pivot_table(index=["dataset", "method"], columns="N", values="accuracy").round(3) if len(curves) else curves'''),
code('''if pools:
    scorers_present = sorted(set().union(*(p.scorers for p in pools.values())))
    fig = plot_score_histograms(pools, scorers_present)
    save_figure(fig, run, "00_score_histograms", caption=pool_caption(pools))'''),
]
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
write_built_notebook(nb, "notebooks/00_data_and_pools.ipynb")
