"""One typed, frozen run configuration, with named profiles and dotted overrides.

Defaults live here. A profile (``profiles/<name>.yaml``) overrides them, may ``extends:``
another profile, and command-line / papermill overrides (``"sampling.temperature=0.5"``) come
last. Unknown keys raise at load time (papermill itself only warns). Constructing a config does
no I/O: validation only.

Sections (one dataclass each):

- ``data``: where the benchmarks live and which are used.
- ``sampling``: the generator (backend, model, decoding, per-benchmark caps and pool sizes).
- ``scoring``: scorers run on every sample.
- ``pools``: where pools are stored, replay settings.
- ``theory`` / ``fit``: the bound and distribution fits (notebooks 01, 02).
- ``predictor``: the question-only prior predictor (notebook 03).
- ``evaluation``: stopping policies, calibration split, bootstrap (notebooks 05, 06).
- ``systems``: particle filtering, MarkovScale, OptPO (notebooks 07+).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "BENCHMARKS",
    "RunConfig",
    "ConfigError",
    "load_config",
    "profile_path",
    "available_profiles",
    "PROJECT_ROOT",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_ROOT / "profiles"
BENCHMARKS = ("math500", "gsm8k", "aime24", "aime25", "amc23")


class ConfigError(ValueError):
    """A profile or override that does not fit the config schema."""


def _per_benchmark(**values: int) -> dict[str, int]:
    return dict(values)


@dataclass(frozen=True)
class DataConfig:
    # Directory holding test_prompts/, predictor_labels/, reference/ (the shared release).
    # None: $OPTSCALE_DATA_DIR, else ../shared/data/optscale next to the project.
    data_dir: str | None = None
    benchmarks: tuple[str, ...] = BENCHMARKS
    # Questions per benchmark: the first k of the selection order after `offset`; 0 = all.
    max_questions: dict[str, int] = field(
        default_factory=lambda: _per_benchmark(math500=64, gsm8k=64, aime24=0, aime25=0, amc23=0)
    )
    # Selection order (optscale.selection): "first" = file order; "stratified" = a seeded order whose
    # every prefix is stratified by subject and level (MATH-500) or a seeded shuffle (others).
    selection: str = "first"
    selection_seed: int = 0
    # Questions of the selection order skipped before the first k (a study placed past the pools).
    offset: dict[str, int] = field(
        default_factory=lambda: _per_benchmark(math500=0, gsm8k=0, aime24=0, aime25=0, amc23=0)
    )


@dataclass(frozen=True)
class SamplingConfig:
    backend: str = "hf-cpu"  # registry name: hf-cpu | llama-cpp | vllm | openai
    model: str = "qwen2.5-coder-0.5b-instruct-q4"  # embedded GGUF name, local path or hub id
    dtype: str = "bfloat16"  # bf16 is ~2x fp32 on this CPU (benchmarks/bench_sampler.py)
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off (llama-cpp backend: over the last 64 generated tokens)
    system_prompt: str = ""  # "" = the chat template's default system message
    seed: int = 0
    batch_size: int = 16  # sequences per generate() call
    prompt_template: str = "solve.txt"  # file in optscale/prompts/
    top_k_logprobs: int = 5  # DeepConf-style token confidence uses the top-k log-probs
    # Samples per question and token cap per sample, per benchmark.
    n_samples: dict[str, int] = field(
        default_factory=lambda: _per_benchmark(math500=16, gsm8k=16, aime24=8, aime25=8, amc23=8)
    )
    max_new_tokens: dict[str, int] = field(
        default_factory=lambda: _per_benchmark(math500=512, gsm8k=320, aime24=512, aime25=512, amc23=512)
    )
    # Remote / GPU backends.
    endpoints: tuple[str, ...] = ()  # OpenAI-compatible base URLs, e.g. http://host:8000/v1
    max_in_flight_per_endpoint: int = 8
    request_timeout_s: float = 600.0
    max_retries: int = 5
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True


@dataclass(frozen=True)
class ScoringConfig:
    scorers: tuple[str, ...] = ("self-certainty", "lm-judge")
    # The scorer policies use unless told otherwise. Self-certainty: on the CPU pools it separates
    # correct from wrong samples far better than the 0.5B LM judge (AUROC 0.77 vs 0.49 on GSM8K,
    # 0.45 vs 0.33 on MATH-500, first 8 questions each; `python -m optscale.generate info`).
    primary: str = "self-certainty"
    aggregation: str = "mean"  # step-score aggregation: mean | min | last | prod (paper: mean)
    judge_template: str = "judge.txt"
    answer_judge_template: str = "answer_judge.txt"  # scorer "answer-judge"
    judge_model: str = "qwen2.5-coder-0.5b-instruct-q4"  # model of the lm-judge / answer-judge scorers
    conf_window: int = 32  # tokens per DeepConf group (scorer "lowest-group-confidence")
    tail_tokens: int = 64  # last tokens averaged by scorer "tail-confidence"
    max_steps: int = 24  # later steps are merged into the last one for judging
    prm_model: str = "Qwen/Qwen2.5-Math-PRM-7B"  # GPU PRM (scorer "prm")
    prm_batch_size: int = 8


@dataclass(frozen=True)
class PoolConfig:
    pool_dir: str = "data/pools"
    pool_name: str = "qwen2.5-coder-0.5b-q4_t0.7_seed0"
    replay_orders: int = 200  # seeded random sample orders per question for replay
    replay_seed: int = 12345


@dataclass(frozen=True)
class TheoryConfig:
    deltas: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)  # failure probabilities checked
    mc_questions: int = 2000  # simulated questions (resampled from the reference fits)
    mc_trials: int = 2000  # Monte Carlo replicates of "draw N* samples" per question
    max_N: int = 64  # sample cap of the bound (the reference's largest N)
    # Targets: each simulated question's own quantile at a level drawn from this range.
    target_levels: tuple[float, float] = (0.5, 0.99)
    reference_peek: int = 3  # which reference/fits/*_peek{k}.csv supplies full_mle_* (same in all)
    seed: int = 7


@dataclass(frozen=True)
class FitConfig:
    family: str = "truncnorm"  # registry name in optscale.fits.FITS used by the policies
    families: tuple[str, ...] = ("truncnorm", "beta", "logit-normal", "kde")  # compared in notebook 02
    peeks: tuple[int, ...] = (3, 5, 10, 20)  # first-k scores the per-question fit sees
    prior_strength: float = 1.0  # MAP: multiplies the Gaussian prior's precision
    prior_tau: tuple[float, float] = (0.1, 0.1)  # MAP prior std of (mu, sigma) at strength 1
    mu_bounds: tuple[float, float] = (-1.0, 2.0)  # box for mu: no divergence (reference: mu up to 139)
    sigma_bounds: tuple[float, float] = (1e-3, 2.0)
    delta: float = 0.1  # delta of the N* errors reported in notebook 02
    target_percentile: float = 0.1  # s* = population F^{-1}(1 - p) in notebook 02
    sim_scores: int = 64  # scores simulated per reference question (the reference pools had 64)
    seed: int = 11


@dataclass(frozen=True)
class PredictorConfig:
    backbone: str = "minilm"  # registry name in optscale.prior.BACKBONES: minilm | text | lm
    head: str = "krr"  # optscale.prior.HEADS: constant | ridge | mlp | ridge+mlp | krr (feature backbones)
    split_seed: int = 0  # seeds the held-out split, CV folds and the MLP
    test_fraction: float = 0.2  # held-out share of the 4,501 MATH training labels
    cv_folds: int = 5  # K-fold on the training part: out-of-fold residuals -> calibrated uncertainty
    epochs: int = 200  # MLP max epochs (early stopping on a validation slice of the training part)
    use_metadata: bool = False  # add MATH level/subject one-hots (only MATH has them)
    train_limit: int = 0  # use only the first k training labels (0 = all 4,501); smoke runs
    bootstrap_reps: int = 1000
    transfer_labeled: int = 8  # labeled questions per pool for the scorer-scale calibration
    # Paper-style backbone (backbone: lm): causal LM, last layers trainable, attention pooling.
    lm_model: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # local path or hub id (GPU)
    lm_trainable_layers: int = 2
    lm_epochs: int = 3


@dataclass(frozen=True)
class EvaluationConfig:
    policies: tuple[str, ...] = ()  # empty = every policy of optscale.evaluation.DEFAULT_POLICIES
    max_N: int = 16  # sample budget per question (capped at the pool's n)
    # crossfit: tune on half A / report on half B, then swap (every question reported once);
    # calibrated: one calibration split (calibration_fraction), reported on the rest.
    protocol: str = "crossfit"
    calibration_fraction: float = 0.5  # questions used for tuning; the rest are reported (calibrated)
    # Non-inferiority to BoN@max_N: one-sided noninferiority_level lower bound of the paired
    # accuracy difference above -noninferiority_margin.
    noninferiority_margin: float = 0.02
    noninferiority_level: float = 0.95
    # Pool sets (directories under pools.pool_dir) of the verifier-AUROC figure; empty = every
    # pool set there. A listed one that does not exist is skipped with a note.
    auroc_pool_sets: tuple[str, ...] = ()
    auroc_policy: str = "optscale-0"  # the OptScale variant of the verifier-AUROC figure
    split_seed: int = 0
    orders: int = 20  # seeded random sample orders per test question (replay)
    tune_orders: int = 4  # orders per calibration question during the grid search
    tolerance: float = 0.01  # tuning: accuracy within this of BoN/majority@max_N, then fewest tokens
    margin: float = 0.02  # "matches BoN": paired CI of the accuracy difference inside +-margin
    deepconf_window: int = 32  # tokens per DeepConf confidence group
    bootstrap_reps: int = 2000
    ci_level: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class SystemsConfig:
    # Shared: live runs use the first `questions` problems of `benchmark` (pool baselines use the
    # pool's questions); `max_new_tokens` caps each live sample; `seed` seeds every live run.
    questions: int = 4  # live runs are CPU-bound: a few questions, illustrative only
    benchmark: str = "gsm8k"
    max_new_tokens: int = 256
    seed: int = 0
    bootstrap_reps: int = 2000
    # Particle filtering (notebook 07): rollout budgets for pool curves, the live subset of them.
    particles: tuple[int, ...] = (1, 2, 4, 8, 16)
    live_particles: tuple[int, ...] = (1, 2, 4, 8, 16)
    pf_temperature: float = 0.2  # softmax(reward / T) over rewards in [0, 1]; 1.0 barely selects
    pf_max_steps: int = 12
    pf_step_tokens: int = 96  # cap per reasoning step (a step ends at a blank line)
    pf_resampler: str = "systematic"  # multinomial | systematic
    pf_reward: str = "last"  # step-score aggregation for the particle reward: last | mean | min | prod
    pf_select: str = "best"  # best | weighted-vote
    # MarkovScale (notebook 08).
    markov_rounds: int = 3
    markov_chains: int = 1  # independent revision chains per question
    revise_template: str = "revise.txt"
    # OptPO (notebook 09).
    optpo_threshold: float = 0.95
    optpo_prior: float = 1.0  # Beta(prior, prior) on the leader's share of the two-way contest
    optpo_max_samples: int = 8  # fixed budget the sequential vote is compared against
    optpo_method: str = "lora"  # lora (peft) | bias
    optpo_steps: int = 2
    optpo_lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(f"systems.benchmark={self.benchmark!r}: use one of {list(BENCHMARKS)}")
        if self.pf_temperature <= 0:
            raise ConfigError("systems.pf_temperature must be > 0")
        if self.pf_resampler not in ("multinomial", "systematic"):
            raise ConfigError(f"systems.pf_resampler={self.pf_resampler!r}: use multinomial|systematic")
        if self.pf_reward not in ("last", "mean", "min", "prod"):
            raise ConfigError(f"systems.pf_reward={self.pf_reward!r}: use last|mean|min|prod")
        if self.pf_select not in ("best", "weighted-vote"):
            raise ConfigError(f"systems.pf_select={self.pf_select!r}: use best|weighted-vote")
        if not 0.5 < self.optpo_threshold < 1.0:
            raise ConfigError("systems.optpo_threshold must be in (0.5, 1)")
        if self.optpo_method not in ("lora", "bias"):
            raise ConfigError(f"systems.optpo_method={self.optpo_method!r}: use lora|bias")
        if min(self.particles + self.live_particles, default=1) < 1 or self.markov_rounds < 1:
            raise ConfigError("systems.particles / live_particles / markov_rounds must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    profile: str = "cpu"
    run_id: str = ""  # empty: derived from profile and time by run_all.sh
    output_root: str = "outputs"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pools: PoolConfig = field(default_factory=PoolConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    systems: SystemsConfig = field(default_factory=SystemsConfig)

    def __post_init__(self) -> None:
        _validate(self)

    # -- conveniences -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def replace(self, overrides: Mapping[str, Any] | None = None, **flat: Any) -> "RunConfig":
        """A copy with nested overrides (``{"sampling": {"seed": 1}}``) or dotted keys."""
        merged = self.to_dict()
        _deep_update(merged, _expand_dotted({**(overrides or {}), **flat}), path="")
        return _from_dict(RunConfig, merged, path="")

    def run_dir(self) -> Path:
        return Path(self.output_root) / (self.run_id or self.profile)


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


def _check_ranges(cfg: RunConfig) -> None:
    for key, (ok, allowed) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ConfigError(f"config key {key!r} = {value!r}: must be {allowed}")


def _validate(cfg: RunConfig) -> None:
    _check_ranges(cfg)
    s, d = cfg.sampling, cfg.data
    unknown = set(d.benchmarks) - set(BENCHMARKS)
    if unknown:
        raise ConfigError(f"data.benchmarks: unknown {sorted(unknown)}; known {list(BENCHMARKS)}")
    for name, table in (
        ("data.max_questions", d.max_questions),
        ("sampling.n_samples", s.n_samples),
        ("sampling.max_new_tokens", s.max_new_tokens),
    ):
        missing = [b for b in d.benchmarks if b not in table]
        if missing:
            raise ConfigError(f"{name}: no value for {missing}")
        bad = {k: v for k, v in table.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"{name}: values must be non-negative integers, got {bad}")
    if not isinstance(s.top_k, int) or s.top_k < 0:
        raise ConfigError(f"sampling.top_k={s.top_k!r}: a non-negative integer (0 = off)")
    if not 0.0 < s.repetition_penalty <= 2.0:
        raise ConfigError(f"sampling.repetition_penalty={s.repetition_penalty!r} outside (0, 2] (1 = off)")
    if d.selection not in ("first", "stratified"):
        raise ConfigError(f"data.selection={d.selection!r}: use first|stratified")
    bad_offset = {k: v for k, v in d.offset.items() if not isinstance(v, int) or v < 0}
    if bad_offset:
        raise ConfigError(f"data.offset: values must be non-negative integers, got {bad_offset}")
    if cfg.scoring.primary not in cfg.scoring.scorers:
        raise ConfigError(
            f"scoring.primary={cfg.scoring.primary!r} is not among scoring.scorers={cfg.scoring.scorers}"
        )
    if cfg.scoring.aggregation not in ("mean", "min", "last", "prod"):
        raise ConfigError(f"scoring.aggregation={cfg.scoring.aggregation!r}: use mean|min|last|prod")
    if cfg.evaluation.protocol not in ("crossfit", "calibrated"):
        raise ConfigError(f"evaluation.protocol={cfg.evaluation.protocol!r}: use crossfit|calibrated")
    if not isinstance(cfg.evaluation.noninferiority_level, float) or not 0.5 <= cfg.evaluation.noninferiority_level < 1.0:
        raise ConfigError(f"evaluation.noninferiority_level={cfg.evaluation.noninferiority_level!r} outside [0.5, 1)")
    if not isinstance(cfg.evaluation.noninferiority_margin, float) or not 0.0 <= cfg.evaluation.noninferiority_margin < 1.0:
        raise ConfigError(f"evaluation.noninferiority_margin={cfg.evaluation.noninferiority_margin!r} outside [0, 1)")


# -- dict <-> dataclass ---------------------------------------------------------------------
def _expand_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _deep_update(base: dict[str, Any], new: Mapping[str, Any], path: str) -> None:
    for k, v in new.items():
        where = f"{path}{k}"
        if k not in base:
            close = [c for c in base if c.startswith(k[:3])]
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"unknown config key {where!r}{hint}")
        if isinstance(base[k], dict) and not isinstance(v, Mapping):
            raise ConfigError(f"config key {where!r} is a section; set its fields, e.g. {where}.<field>=...")
        if isinstance(base[k], dict) and isinstance(v, Mapping):
            # Per-benchmark tables are replaced key by key; sections recurse.
            _deep_update(base[k], v, path=where + ".") if _is_section(base[k]) else base[k].update(v)
        else:
            base[k] = v


def _is_section(d: dict[str, Any]) -> bool:
    # A per-benchmark table has only benchmark names as keys; sections have field names.
    return not set(d) <= set(BENCHMARKS) or not d


def _coerce(key: str, v: Any, default: Any, annotation: str) -> Any:
    """``v`` as the type of the field's default (int -> float where a float is expected, a list ->
    a tuple, ``"a, b"`` -> a tuple of names), else a ConfigError naming the key, the value and the
    type expected."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} = {v!r}: expected {expected}, got {type(v).__name__}")

    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad("a finite number")
        v = float(v)
    elif isinstance(default, str) or (default is None and "str" in annotation):
        if not isinstance(v, str) and not (v is None and default is None):
            raise bad("a string")
    elif isinstance(default, tuple):
        if isinstance(v, str) and (not default or isinstance(default[0], str)):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, (list, tuple)):
            raise bad(f"a list, e.g. {list(default) or ['...']}")
        elem = default[0] if default else ("" if "tuple[str" in annotation else None)
        v = tuple(_coerce(f"{key}[{i}]", x, elem, "") if elem is not None else x for i, x in enumerate(v))
    return v


def _from_dict(cls: type, data: Mapping[str, Any], path: str) -> Any:
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in fields(cls)}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"unknown config key {path + k!r}")
        f = names[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(v, Mapping):
            v = _from_dict(type(default), v, path=f"{path}{k}.")
        elif not isinstance(default, dict):  # per-benchmark tables are checked in _validate
            v = _coerce(path + k, v, default, str(f.type))
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{path or 'config'}: {e}") from None


# -- profiles -------------------------------------------------------------------------------
def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = PROFILES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"no profile {name!r}; available: {available_profiles()}")
    return p


def _read_profile(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ConfigError(f"profile cycle: {' -> '.join(seen + (name,))}")
    path = profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a mapping")
    parent = raw.pop("extends", None)
    merged = _read_profile(parent, seen + (name,)) if parent else {}
    _merge_plain(merged, raw)
    return merged


def _merge_plain(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge_plain(base[k], v)
        else:
            base[k] = v


def parse_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides as a mapping, a JSON/YAML mapping string, or ``"a.b=1, c.d=x"`` pairs."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    text = overrides.strip()
    if text.startswith("{"):
        loaded = _yaml_value(text, f"overrides {text!r}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"overrides {overrides!r} is not a mapping")
        return loaded
    out: dict[str, Any] = {}
    for item in _split_overrides(text):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"override {item.strip()!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = _yaml_value(v.strip(), f"override {item.strip()!r}")
    return out


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not a valid value ({getattr(e, 'problem', None) or e})") from None


def _split_overrides(text: str) -> list[str]:
    """``"a=1, b=[0.1, 0.05]; c={x: 1}"`` -> the ``key=value`` items: split at commas, semicolons and
    newlines outside brackets, braces and quoted strings (a quote opens a string only where YAML
    starts a value: after ``=``, ``[``, ``{``, ``,`` or ``:``)."""
    items, cur, depth, quote, prev = [], [], 0, "", "="
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'" and prev in "=[{,:":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch in ",;\n" and depth <= 0:
            items.append("".join(cur))
            cur, prev, depth = [], "=", 0
            continue
        cur.append(ch)
        prev = ch if not ch.isspace() else prev
    items.append("".join(cur))
    if depth > 0 or quote:
        raise ConfigError(f"overrides {text!r}: unclosed {'quote' if quote else 'bracket'}")
    return items


def load_config(
    profile: str = "cpu", overrides: str | Mapping[str, Any] | None = None, run_id: str | None = None
) -> RunConfig:
    """Defaults <- profile (with ``extends``) <- overrides. Unknown keys raise ConfigError."""
    base = RunConfig().to_dict()
    prof = _read_profile(profile)
    prof.setdefault("profile", Path(profile).stem)
    _deep_update(base, _expand_dotted(prof), path="")
    _deep_update(base, _expand_dotted(parse_overrides(overrides)), path="")
    if run_id is not None:
        base["run_id"] = run_id
    if os.environ.get("OPTSCALE_DATA_DIR") and base["data"]["data_dir"] is None:
        base["data"]["data_dir"] = os.environ["OPTSCALE_DATA_DIR"]
    return _from_dict(RunConfig, base, path="")
