"""One typed, frozen run configuration, with named profiles and dotted overrides.

Defaults live here. A profile (``profiles/<name>.yaml``) overrides them, may ``extends:``
another profile, and command-line / papermill overrides (``"sampling.temperature=0.5"``) come
last. Unknown keys raise at load time (papermill itself only warns), and so do registry names
(backend, scorers, fit families, predictor parts, policies, resampler) and prompt files that do
not exist, with "did you mean" (the registries hold heavy parts as lazy strings: checking a name
imports none of them). Constructing a config does no I/O beyond listing optscale/prompts/:
validation only.

Sections (one dataclass each):

- ``data``: where the benchmarks live and which are used.
- ``sampling``: the generator (backend, model, decoding, per-benchmark caps and pool sizes).
- ``scoring``: scorers run on every sample.
- ``pools``: where pools are stored, replay settings.
- ``theory`` / ``fit``: the bound and distribution fits (notebooks 01, 02).
- ``predictor``: the question-only prior predictor (notebook 03).
- ``evaluation``: stopping policies, calibration split, bootstrap (notebooks 05, 06).
- ``systems``: particle filtering, MarkovScale, OptPO (notebooks 07+).

Modules: :mod:`~optscale.config.sections` (the section dataclasses and their defaults),
:mod:`~optscale.config.checks` (value ranges and cross-key rules), :mod:`~optscale.config.run`
(:class:`RunConfig`, profiles, overrides, :func:`load_config`). Import from ``optscale.config``.
"""


from .run import RunConfig, available_profiles, load_config, parse_overrides, profile_path
from .sections import (BENCHMARKS, DEFAULT_PROFILE, PROFILES_DIR, PROJECT_ROOT, ConfigError, DataConfig, EvaluationConfig, FitConfig,
                       PoolConfig, PredictorConfig, SamplingConfig, ScoringConfig, SystemsConfig, TheoryConfig)

__all__ = [
    "BENCHMARKS",
    "PROJECT_ROOT",
    "PROFILES_DIR",
    "DEFAULT_PROFILE",
    "ConfigError",
    "RunConfig",
    "load_config",
    "parse_overrides",
    "profile_path",
    "available_profiles",
    "DataConfig",
    "SamplingConfig",
    "ScoringConfig",
    "PoolConfig",
    "TheoryConfig",
    "FitConfig",
    "PredictorConfig",
    "EvaluationConfig",
    "SystemsConfig",
]
