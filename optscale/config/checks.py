"""Validation of a :class:`~optscale.config.run.RunConfig`: value ranges per key and cross-key rules;
every violation is a :class:`~optscale.config.sections.ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import resources
from typing import TYPE_CHECKING, Any

from .sections import BENCHMARKS, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .run import RunConfig


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def ok(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return ok, text


_UNIT_OPEN = _between(0, 1, True, True)
_AT_LEAST_0 = (lambda v: v >= 0, "a number >= 0")
_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_POSITIVE = (lambda v: v > 0, "a number > 0")


def _each(check, n: int | None = None):
    ok, text = check

    def ok_all(t: tuple) -> bool:
        return (len(t) == n if n else len(t) > 0) and all(ok(x) for x in t)

    return ok_all, f"{f'{n} values' if n else 'a non-empty list'}, each {text}"


def _pair_increasing(check):
    ok, text = check
    return (lambda t: len(t) == 2 and ok(t[0]) and ok(t[1]) and t[0] < t[1]), f"(low, high), low < high, each {text}"


# Allowed values of the numeric fields (checked after the types): dotted key -> (test, allowed).
_RANGES: dict[str, tuple[Any, str]] = {
    "sampling.temperature": _between(0, 5),
    "sampling.top_p": _between(0, 1, lo_open=True),
    "sampling.seed": _AT_LEAST_0,
    "sampling.batch_size": _AT_LEAST_1,
    "sampling.top_k_logprobs": _AT_LEAST_0,
    "sampling.max_in_flight_per_endpoint": _AT_LEAST_1,
    "sampling.request_timeout_s": _POSITIVE,
    "sampling.max_retries": _AT_LEAST_0,
    "sampling.tensor_parallel_size": _AT_LEAST_1,
    "sampling.gpu_memory_utilization": _between(0, 1, lo_open=True),
    "data.selection_seed": _AT_LEAST_0,
    "scoring.conf_window": _AT_LEAST_1,
    "scoring.tail_tokens": _AT_LEAST_1,
    "scoring.max_steps": _AT_LEAST_1,
    "scoring.prm_batch_size": _AT_LEAST_1,
    "pools.replay_orders": _AT_LEAST_1,
    "pools.replay_seed": _AT_LEAST_0,
    "theory.deltas": _each(_UNIT_OPEN),
    "theory.mc_questions": _AT_LEAST_1,
    "theory.mc_trials": _AT_LEAST_1,
    "theory.max_N": _AT_LEAST_1,
    "theory.target_levels": (lambda t: len(t) == 2 and 0 < t[0] <= t[1] < 1, "(low, high) with 0 < low <= high < 1"),
    "theory.reference_peek": ((lambda v: v in (3, 5, 10, 20)), "one of 3, 5, 10, 20 (reference/fits/*_peek{k}.csv)"),
    "theory.seed": _AT_LEAST_0,
    "fit.families": (lambda t: len(t) > 0, "a non-empty list of fit names"),
    "fit.peeks": _each(_AT_LEAST_1),
    "fit.prior_strength": _AT_LEAST_0,
    "fit.prior_tau": _each(_POSITIVE, 2),
    "fit.mu_bounds": _pair_increasing((lambda v: True, "a number")),
    "fit.sigma_bounds": _pair_increasing(_POSITIVE),
    "fit.delta": _UNIT_OPEN,
    "fit.target_percentile": _UNIT_OPEN,
    "fit.sim_scores": _AT_LEAST_1,
    "fit.seed": _AT_LEAST_0,
    "predictor.split_seed": _AT_LEAST_0,
    "predictor.test_fraction": _UNIT_OPEN,
    "predictor.cv_folds": (lambda v: v >= 2, "an integer >= 2"),
    "predictor.epochs": _AT_LEAST_1,
    "predictor.train_limit": _AT_LEAST_0,
    "predictor.bootstrap_reps": _AT_LEAST_1,
    "predictor.transfer_labeled": _AT_LEAST_0,
    "predictor.lm_trainable_layers": _AT_LEAST_0,
    "predictor.lm_epochs": _AT_LEAST_1,
    "evaluation.max_N": _AT_LEAST_1,
    "evaluation.calibration_fraction": _UNIT_OPEN,
    "evaluation.split_seed": _AT_LEAST_0,
    "evaluation.orders": _AT_LEAST_1,
    "evaluation.tune_orders": _AT_LEAST_1,
    "evaluation.tolerance": _between(0, 1),
    "evaluation.margin": _between(0, 1),
    "evaluation.deepconf_window": _AT_LEAST_1,
    "evaluation.bootstrap_reps": _AT_LEAST_1,
    "evaluation.ci_level": _UNIT_OPEN,
    "evaluation.seed": _AT_LEAST_0,
    "systems.questions": _AT_LEAST_1,
    "systems.max_new_tokens": _AT_LEAST_1,
    "systems.seed": _AT_LEAST_0,
    "systems.bootstrap_reps": _AT_LEAST_1,
    "systems.pf_max_steps": _AT_LEAST_1,
    "systems.pf_step_tokens": _AT_LEAST_1,
    "systems.markov_chains": _AT_LEAST_1,
    "systems.optpo_prior": _POSITIVE,
    "systems.optpo_max_samples": _AT_LEAST_1,
    "systems.optpo_steps": _AT_LEAST_0,
    "systems.optpo_lr": _POSITIVE,
}


# Keys that name a registered part: dotted key -> "module:registry". The registry is imported only
# when a config is checked (its module imports the config package); it holds heavy parts (vLLM,
# torch models) as lazy "module:attr" strings, so checking a name imports none of them.
_REGISTRY_KEYS: dict[str, str] = {
    "sampling.backend": "optscale.sampling:SAMPLERS",
    "scoring.scorers": "optscale.scoring.scorers:SCORERS",
    "scoring.pool_scorers": "optscale.scoring.scorers:SCORERS",
    "fit.families": "optscale.theory.fits:FITS",
    "predictor.backbone": "optscale.predictor.heads:BACKBONES",
    "predictor.head": "optscale.predictor.heads:HEADS",
    "evaluation.policies": "optscale.policies:POLICIES",
    "evaluation.auroc_policy": "optscale.policies:POLICIES",
    "systems.pf_resampler": "optscale.systems.particle_filter:RESAMPLERS",
}
# Keys that name a prompt file in optscale/prompts/ (read by optscale.sampling.load_prompt_template).
_PROMPT_KEYS = ("sampling.prompt_template", "scoring.judge_template", "scoring.answer_judge_template",
                "systems.revise_template")


def _value(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _check_names(cfg: RunConfig) -> None:
    """Every registry name and prompt file the config names exists, else a ConfigError naming the
    key, the known names and the close ones."""
    for key, where in _REGISTRY_KEYS.items():
        module, _, attr = where.partition(":")
        registry = getattr(importlib.import_module(module), attr)
        value = _value(cfg, key)
        for i, name in enumerate(value) if isinstance(value, tuple) else ((None, value),):
            problem = registry.unknown(name)
            if problem:
                raise ConfigError(f"config key {key if i is None else f'{key}[{i}]'!r} = {name!r}: {problem}")
    folder = resources.files("optscale.prompts")
    prompts = sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))
    for key in _PROMPT_KEYS:
        name = _value(cfg, key)
        if name in prompts:
            continue
        close = difflib.get_close_matches(name, prompts, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"config key {key!r} = {name!r}: not a prompt file in optscale/prompts/ "
                          f"(a file name there; known: {', '.join(prompts)}).{hint}")


def _check_ranges(cfg: RunConfig) -> None:
    for key, (ok, allowed) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ConfigError(f"config key {key!r} = {value!r}: must be {allowed}")


def _validate(cfg: RunConfig) -> None:
    _check_ranges(cfg)
    _check_names(cfg)
    s, d = cfg.sampling, cfg.data
    unknown = set(d.benchmarks) - set(BENCHMARKS)
    if unknown:
        raise ConfigError(f"data.benchmarks: unknown {sorted(unknown)}; known {list(BENCHMARKS)}")
    for name, table, least in (
        ("data.max_questions", d.max_questions, 0),  # 0 = every question
        ("sampling.n_samples", s.n_samples, 1),
        ("sampling.max_new_tokens", s.max_new_tokens, 1),
    ):
        missing = [b for b in d.benchmarks if b not in table]
        if missing:
            raise ConfigError(f"{name}: no value for {missing}")
        bad = {k: v for k, v in table.items() if isinstance(v, bool) or not isinstance(v, int) or v < least}
        if bad:
            raise ConfigError(f"{name}: values must be integers >= {least}, got {bad}")
    if not isinstance(s.top_k, int) or s.top_k < 0:
        raise ConfigError(f"sampling.top_k={s.top_k!r}: a non-negative integer (0 = off)")
    if not 0.0 < s.repetition_penalty <= 2.0:
        raise ConfigError(f"sampling.repetition_penalty={s.repetition_penalty!r} outside (0, 2] (1 = off)")
    if d.selection not in ("first", "stratified"):
        raise ConfigError(f"data.selection={d.selection!r}: use first|stratified")
    bad_offset = {k: v for k, v in d.offset.items() if not isinstance(v, int) or v < 0}
    if bad_offset:
        raise ConfigError(f"data.offset: values must be non-negative integers, got {bad_offset}")
    combos = cfg.scoring.combinations
    if not isinstance(combos, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in combos.items()):
        raise ConfigError(f"scoring.combinations={combos!r}: a mapping name -> path of a fitted combination (JSON)")
    clash = sorted(set(combos) & set(cfg.scoring.scorers))
    if clash:
        raise ConfigError(f"scoring.combinations: {clash} are also in scoring.scorers; a combination needs its own name")
    both = sorted(set(cfg.scoring.pool_scorers) & set(cfg.scoring.scorers))
    if both:
        raise ConfigError(f"scoring.pool_scorers: {both} are also in scoring.scorers; a pool scorer is computed "
                          "on the committed pool (`generate score`), never while sampling")
    known = tuple(cfg.scoring.scorers) + tuple(cfg.scoring.pool_scorers) + tuple(combos)
    also = ((f" or scoring.pool_scorers={list(cfg.scoring.pool_scorers)}" if cfg.scoring.pool_scorers else "")
            + (f" or scoring.combinations={list(combos)}" if combos else ""))
    if cfg.scoring.primary not in known:
        raise ConfigError(f"scoring.primary={cfg.scoring.primary!r} is not among scoring.scorers={cfg.scoring.scorers}" + also)
    by_benchmark = cfg.scoring.primary_by_benchmark
    if not isinstance(by_benchmark, dict):
        raise ConfigError(f"scoring.primary_by_benchmark={by_benchmark!r}: a mapping benchmark -> scorer")
    for ds, scorer in by_benchmark.items():
        if ds not in BENCHMARKS:
            raise ConfigError(f"scoring.primary_by_benchmark: unknown benchmark {ds!r}; known {list(BENCHMARKS)}")
        if scorer not in known:
            raise ConfigError(f"scoring.primary_by_benchmark.{ds}={scorer!r} is not among "
                              f"scoring.scorers={cfg.scoring.scorers}" + also)
    if cfg.scoring.aggregation not in ("mean", "min", "last", "prod"):
        raise ConfigError(f"scoring.aggregation={cfg.scoring.aggregation!r}: use mean|min|last|prod")
    if cfg.evaluation.protocol not in ("crossfit", "calibrated"):
        raise ConfigError(f"evaluation.protocol={cfg.evaluation.protocol!r}: use crossfit|calibrated")
    if not isinstance(cfg.evaluation.noninferiority_level, float) or not 0.5 <= cfg.evaluation.noninferiority_level < 1.0:
        raise ConfigError(f"evaluation.noninferiority_level={cfg.evaluation.noninferiority_level!r} outside [0.5, 1)")
    if not isinstance(cfg.evaluation.noninferiority_margin, float) or not 0.0 <= cfg.evaluation.noninferiority_margin < 1.0:
        raise ConfigError(f"evaluation.noninferiority_margin={cfg.evaluation.noninferiority_margin!r} outside [0, 1)")
