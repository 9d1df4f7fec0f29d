"""OptScale workbook: probabilistically optimal inference-time scaling, as a tested package.

The package follows the pipeline, one subpackage per stage::

    data.benchmarks ─> sampling (samplers) ─> data.pools ─> scoring.scorers / data.grading
        ─> policies + evaluation.replay ─> evaluation (protocol, statistics) ─> figures / tables

- :mod:`optscale.data`: benchmarks, question selection, grading, pools and their generation, importers.
- :mod:`optscale.sampling`: samplers (registry ``SAMPLERS``), model files, Ray.
- :mod:`optscale.scoring`: scorers (``SCORERS``), the PRM, fitted verifier combinations.
- :mod:`optscale.theory`: the truncated normal, the bound ``N*``, fits and distribution families (``FITS``).
- :mod:`optscale.predictor`: the question-only prior predictor (``BACKBONES``, ``HEADS``) and its evaluation.
- :mod:`optscale.policies`: stopping policies (``POLICIES``), one module per family.
- :mod:`optscale.evaluation`: replay, statistics, the cross-fitted protocol, the paper comparison,
  curves, figures and the live driver.
- :mod:`optscale.systems`: particle filtering, OptPO, MarkovScale.
- At the top: :mod:`~optscale.config`, :mod:`~optscale.registry`, :mod:`~optscale.provenance`,
  :mod:`~optscale.notebook`, and the command lines ``python -m optscale.generate`` and
  ``python -m optscale.study``.

The names below are the public API the notebooks use (``from optscale import run_evaluation``).
They are imported on first use, so ``import optscale`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_API: dict[str, str] = {
    # configuration, provenance, notebooks
    "load_config": "optscale.config",
    "RunConfig": "optscale.config",
    "ConfigError": "optscale.config",
    "setup_notebook": "optscale.notebook",
    "save_table": "optscale.provenance",
    "save_figure": "optscale.provenance",
    # data
    "Problem": "optscale.data.benchmarks",
    "load_benchmark": "optscale.data.benchmarks",
    "load_predictor_labels": "optscale.data.benchmarks",
    "resolve_data_dir": "optscale.data.benchmarks",
    "config_problems": "optscale.data.selection",
    "is_equivalent": "optscale.data.grading",
    "answer_classes": "optscale.data.grading",
    "Pool": "optscale.data.pools",
    "PoolError": "optscale.data.pools",
    "pool_path": "optscale.data.pools",
    "read_pool": "optscale.data.pools",
    "replay_orders": "optscale.data.pools",
    "generate_pool": "optscale.data.generation",
    # sampling and scoring
    "SAMPLERS": "optscale.sampling",
    "get_sampler": "optscale.sampling",
    "load_prompt_template": "optscale.sampling.base",
    "SCORERS": "optscale.scoring.scorers",
    "get_scorer": "optscale.scoring.scorers",
    "build_judge": "optscale.scoring.scorers",
    "build_scorers": "optscale.scoring.scorers",
    # theory
    "n_star": "optscale.theory.bounds",
    "required_samples": "optscale.theory.bounds",
    "fit_truncnorm": "optscale.theory.fits",
    "FITS": "optscale.theory.fits",
    # predictor
    "PriorPredictor": "optscale.predictor.prior",
    "build_predictor": "optscale.predictor.factory",
    "load_predictor": "optscale.predictor.factory",
    "embed_minilm": "optscale.predictor.features",
    "metadata_features": "optscale.predictor.features",
    "split_indices": "optscale.predictor.metrics",
    "question_groups": "optscale.predictor.metrics",
    "evaluate_predictions": "optscale.predictor.metrics",
    "interval_coverage": "optscale.predictor.metrics",
    "pool_targets": "optscale.predictor.calibration",
    "transfer_evaluate": "optscale.predictor.calibration",
    # policies
    "POLICIES": "optscale.policies",
    "make_policy": "optscale.policies",
    # evaluation
    "pool_arrays": "optscale.evaluation.replay",
    "replay": "optscale.evaluation.replay",
    "split_questions": "optscale.evaluation.statistics",
    "interval_estimates": "optscale.evaluation.statistics",
    "evaluate": "optscale.evaluation.protocol",
    "run_evaluation": "optscale.evaluation.runner",
    "load_reported_table": "optscale.evaluation.paper",
    "paper_comparison": "optscale.evaluation.paper",
    "verifier_auroc_points": "optscale.evaluation.verifier_auroc",
    "verifier_auroc_caption": "optscale.evaluation.verifier_auroc",
    "run_verifier_sweep": "optscale.evaluation.verifier_sweep",
    "sweep_sanity": "optscale.evaluation.verifier_sweep",
    "sweep_curves": "optscale.evaluation.verifier_sweep",
    "break_even_aurocs": "optscale.evaluation.verifier_sweep",
    "sweep_model_check": "optscale.evaluation.verifier_sweep",
    "sweep_calibration": "optscale.evaluation.verifier_sweep",
    "verifier_sweep_caption": "optscale.evaluation.verifier_sweep",
    "sweep_overlay_caption": "optscale.evaluation.verifier_sweep",
    "plot_verifier_sweep": "optscale.evaluation.figures",
    "pool_summary": "optscale.evaluation.curves",
    "fixed_n_curves": "optscale.evaluation.curves",
    "plot_pareto": "optscale.evaluation.figures",
    "plot_savings": "optscale.evaluation.figures",
    "plot_verifier_auroc": "optscale.evaluation.figures",
    "plot_fixed_n_curves": "optscale.evaluation.pool_figures",
    "plot_score_histograms": "optscale.evaluation.pool_figures",
    "describe_scorers": "optscale.evaluation.pool_figures",
    "pool_caption": "optscale.evaluation.pool_figures",
    "run_live": "optscale.evaluation.live",
    # seed systems
    "live_sampler": "optscale.systems",
    # the generator study (python -m optscale.study)
    "plot_study": "optscale.study",
    "study_caption": "optscale.study",
    "study_table": "optscale.study",
    "verifier_table": "optscale.study",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'optscale' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
