"""The config sections, one frozen dataclass each, with their defaults (see :mod:`optscale.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BENCHMARKS",
    "ConfigError",
    "PROJECT_ROOT",
    "DEFAULT_PROFILE",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = PROJECT_ROOT / "profiles"
# The profile that run_all.sh, the notebooks' ``profile`` parameter, ``python -m optscale.generate``
# and load_config() use when none is named: the 1.5B pools, whose GSM8K verifier ranks samples
# (issue 16). ``cpu`` is the 0.5B weak-verifier set.
DEFAULT_PROFILE = "cpu-1.5b"
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
    # Selection order (optscale.data.selection): "first" = file order; "stratified" = a seeded order whose
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
    # transformers dtype (hf-cpu sampler, LM judges, OptPO); auto: bfloat16 on a GPU or a CPU with native
    # bf16 (AVX512_BF16 / AMX, probed), else float32 (optscale.sampling.hf_models.resolve_dtype)
    dtype: str = "auto"
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
    # Scorers computed on a committed pool only, by `python -m optscale.generate score --scorer <name>`
    # (the probe: cross-fitted by question over the pool, so no question is scored by a head that saw
    # it), never built while sampling; `primary` / `primary_by_benchmark` may name one, whose
    # column the benchmark's pool must then carry.
    pool_scorers: tuple[str, ...] = ()
    # The scorer policies use unless told otherwise. Self-certainty: on the CPU pools it separates
    # correct from wrong samples far better than the 0.5B LM judge (AUROC 0.77 vs 0.49 on GSM8K,
    # 0.45 vs 0.33 on MATH-500, first 8 questions each; `python -m optscale.generate info`).
    primary: str = "self-certainty"
    # Per-benchmark exceptions to `primary`, e.g. {math500: answer-judge}: a pool set whose best
    # verifier differs by benchmark (chosen on study questions, not on the pools it is used on).
    primary_by_benchmark: dict[str, str] = field(default_factory=dict)
    # Derived scorers: name -> a fitted combination of per-sample features (the JSON that
    # `python -m optscale.study combine` writes, e.g. data/study/cpu-1.5b/combined.json; a relative
    # path is read from the project root). `python -m optscale.generate combine` writes its
    # score__<name> column into the pools once every feature is scored; `primary` /
    # `primary_by_benchmark` may name one.
    combinations: dict[str, str] = field(default_factory=dict)
    aggregation: str = "mean"  # step-score aggregation: mean | min | last | prod (paper: mean)
    judge_template: str = "judge.txt"
    answer_judge_template: str = "answer_judge.txt"  # scorer "answer-judge"
    judge_model: str = "qwen2.5-coder-0.5b-instruct-q4"  # model of the lm-judge / answer-judge scorers
    conf_window: int = 32  # tokens per DeepConf group (scorer "lowest-group-confidence")
    tail_tokens: int = 64  # last tokens averaged by scorer "tail-confidence"
    max_steps: int = 24  # later steps are merged into the last one for judging
    prm_model: str = "Qwen/Qwen2.5-Math-PRM-7B"  # GPU PRM (scorer "prm")
    prm_batch_size: int = 8

    def combination_path(self, name: str) -> Path:
        """The fitted model file of combination ``name`` (``combinations[name]``; a relative path
        is read from the project root)."""
        return PROJECT_ROOT / self.combinations[name]

    def primary_for(self, dataset: str) -> str:
        """The scorer policies use on ``dataset``: ``primary_by_benchmark[dataset]``, else ``primary``."""
        return self.primary_by_benchmark.get(dataset, self.primary)


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
    # registry names in optscale.theory.fits.FITS compared in notebook 02 (the policies fit the
    # truncated normal: optscale.policies.score_distribution)
    families: tuple[str, ...] = ("truncnorm", "beta", "logit-normal", "kde")
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
    backbone: str = "minilm"  # registry name in optscale.predictor.heads.BACKBONES: minilm | text | lm
    head: str = "krr"  # optscale.predictor.heads.HEADS: constant | ridge | mlp | ridge+mlp | krr (feature backbones)
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
    policies: tuple[str, ...] = ()  # empty = every policy of optscale.evaluation.protocol.DEFAULT_POLICIES
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
    # Verifier-quality sweep (notebook 10; SEMI-SYNTHETIC binormal scores on the real pools,
    # optscale.evaluation.verifier_sweep): within-question AUROC levels, seeds 0..k-1, shift modes
    # (difficulty | independent), pool sets (empty = pools.pool_name), first k questions per pool
    # (0 = all), replay orders (fewer than notebook 05's, for time; 0 = orders / tune_orders),
    # worker processes (the result does not depend on them).
    sweep_aurocs: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
    sweep_seeds: int = 3
    sweep_shift_modes: tuple[str, ...] = ("difficulty", "independent")
    sweep_pool_sets: tuple[str, ...] = ()
    sweep_questions: int = 0
    sweep_orders: int = 10
    sweep_tune_orders: int = 2
    sweep_jobs: int = 2
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
    pf_resampler: str = "systematic"  # optscale.systems.particle_filter.RESAMPLERS: multinomial | systematic
    pf_reward: str = "last"  # step-score aggregation for the particle reward: last | mean | min | prod
    pf_select: str = "best"  # best | weighted-vote
    # step reward: lm-judge (scoring.judge_model over each partial text) | self-certainty (the
    # generator's own exp(mean token log-prob) of each new step: no judge model, no extra compute)
    pf_scorer: str = "lm-judge"
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
        if self.pf_reward not in ("last", "mean", "min", "prod"):
            raise ConfigError(f"systems.pf_reward={self.pf_reward!r}: use last|mean|min|prod")
        if self.pf_select not in ("best", "weighted-vote"):
            raise ConfigError(f"systems.pf_select={self.pf_select!r}: use best|weighted-vote")
        if self.pf_scorer not in ("lm-judge", "self-certainty"):
            raise ConfigError(f"systems.pf_scorer={self.pf_scorer!r}: use lm-judge|self-certainty")
        if not 0.5 < self.optpo_threshold < 1.0:
            raise ConfigError("systems.optpo_threshold must be in (0.5, 1)")
        if self.optpo_method not in ("lora", "bias"):
            raise ConfigError(f"systems.optpo_method={self.optpo_method!r}: use lora|bias")
        if min(self.particles + self.live_particles, default=1) < 1 or self.markov_rounds < 1:
            raise ConfigError("systems.particles / live_particles / markov_rounds must be >= 1")
