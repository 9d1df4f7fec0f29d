import pytest
import yaml

from optscale.config import (BENCHMARKS, ConfigError, RunConfig, available_profiles, load_config, parse_overrides,
                             profile_path)


def test_defaults_validate_and_roundtrip():
    cfg = RunConfig()
    assert cfg.sampling.backend == "hf-cpu"
    again = RunConfig().replace(cfg.to_dict())
    assert again == cfg


def test_profile_extends_and_overrides():
    smoke = load_config("smoke")
    assert smoke.profile == "smoke"
    assert smoke.data.max_questions["gsm8k"] == 4
    # inherited from cpu (defaults) where smoke says nothing
    assert smoke.sampling.temperature == RunConfig().sampling.temperature
    cfg = load_config("cpu", "sampling.seed=3, data.max_questions.gsm8k=5")
    assert cfg.sampling.seed == 3 and cfg.data.max_questions["gsm8k"] == 5
    assert cfg.data.max_questions["math500"] == RunConfig().data.max_questions["math500"]
    cfg = load_config("cpu", '{"sampling": {"temperature": 0.2}}')
    assert cfg.sampling.temperature == 0.2


@pytest.mark.parametrize("bad", ["sampling.sed=3", "nosuch.key=1", "sampling=3"])
def test_unknown_keys_raise(bad):
    with pytest.raises(ConfigError):
        load_config("cpu", bad)


def test_type_and_range_errors():
    with pytest.raises(ConfigError, match="integer"):
        load_config("cpu", "sampling.batch_size=abc")
    with pytest.raises(ConfigError, match="temperature"):
        load_config("cpu", "sampling.temperature=-1")
    with pytest.raises(ConfigError, match="unknown"):
        load_config("cpu", "data.benchmarks=[math501]")
    with pytest.raises(ConfigError, match="no profile"):
        load_config("does-not-exist")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides("sampling.seed")


def test_profiles_load_and_differ():
    names = available_profiles()
    assert {"cpu", "smoke"} <= set(names)
    loaded = {n: load_config(n) for n in names}
    dicts = {n: {k: v for k, v in c.to_dict().items() if k != "profile"} for n, c in loaded.items()}
    for a in names:
        for b in names:
            if a < b:
                assert dicts[a] != dicts[b], f"profiles {a} and {b} resolve to the same config"
    for n in names:
        assert isinstance(yaml.safe_load(profile_path(n).read_text()), dict)


def test_every_benchmark_has_sampling_settings():
    cfg = RunConfig()
    for b in BENCHMARKS:
        assert cfg.sampling.n_samples[b] >= 8 and cfg.sampling.max_new_tokens[b] > 0


# -- issue 17 items 2, 3: types and ranges at load time; lists in key=value overrides -----------
@pytest.mark.parametrize("override,message", [
    ("fit.delta=abc", "config key 'fit.delta' = 'abc': expected a finite number, got str"),
    ("evaluation.tolerance=abc", "config key 'evaluation.tolerance' = 'abc': expected a finite number"),
    ("theory.deltas=0.1", "config key 'theory.deltas' = 0.1: expected a list, e.g. [0.01, 0.05, 0.1, 0.2], got float"),
    ("theory.deltas=[0.1, abc]", "config key 'theory.deltas[1]' = 'abc': expected a finite number"),
    ("fit.delta=-3", "config key 'fit.delta' = -3.0: must be in (0, 1)"),
    ("evaluation.max_N=0", "config key 'evaluation.max_N' = 0: must be an integer >= 1"),
    ("evaluation.orders=-5", "config key 'evaluation.orders' = -5: must be an integer >= 1"),
    ("theory.deltas=[0.1, 2]", "config key 'theory.deltas' = (0.1, 2.0): must be a non-empty list, each in (0, 1)"),
    ("fit.peeks=[3, 4.5]", "config key 'fit.peeks[1]' = 4.5: expected an integer, got float"),
    ("fit.sigma_bounds=[0.5, 0.1]", "config key 'fit.sigma_bounds' = (0.5, 0.1): must be (low, high), low < high"),
    ("evaluation.ci_level=.nan", "config key 'evaluation.ci_level' = nan: expected a finite number"),
])
def test_config_types_and_ranges_are_checked_at_load(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("cpu", override)
    assert str(e.value).startswith(message)


def test_list_values_in_key_value_overrides():
    cfg = load_config("cpu", "theory.deltas=[0.1, 0.05], fit.delta=0.2; data.benchmarks=[gsm8k, math500]")
    assert cfg.theory.deltas == (0.1, 0.05) and cfg.fit.delta == 0.2 and cfg.data.benchmarks == ("gsm8k", "math500")
    assert parse_overrides("sampling.model='a,b', x.y={a: 1, b: [2, 3]}") == {"sampling.model": "a,b",
                                                                            "x.y": {"a": 1, "b": [2, 3]}}
    with pytest.raises(ConfigError, match=r"overrides 'theory.deltas=\[0.1, 0.05': unclosed bracket"):
        load_config("cpu", "theory.deltas=[0.1, 0.05")
    with pytest.raises(ConfigError, match=r"override 'fit.delta=@3': not a valid value"):
        load_config("cpu", "fit.delta=@3")


def test_primary_scorer_per_benchmark():
    cfg = load_config("cpu", "scoring.primary_by_benchmark.math500=lm-judge")
    assert cfg.scoring.primary_for("math500") == "lm-judge"
    assert cfg.scoring.primary_for("gsm8k") == cfg.scoring.primary == "self-certainty"
    assert load_config("cpu").scoring.primary_for("math500") == "self-certainty"
    with pytest.raises(ConfigError, match=r"scoring.primary_by_benchmark.math500='prm' is not among scoring.scorers"):
        load_config("cpu", "scoring.primary_by_benchmark.math500=prm")
    # a fitted combination of features (scoring.combinations) may be the primary scorer too
    cfg = load_config("cpu", "scoring.combinations.mix=data/study/x.json, scoring.primary_by_benchmark.math500=mix")
    assert cfg.scoring.primary_for("math500") == "mix" and cfg.scoring.primary_for("gsm8k") == "self-certainty"
    with pytest.raises(ConfigError, match=r"scoring.combinations: \['lm-judge'\] are also in scoring.scorers"):
        load_config("cpu", "scoring.combinations.lm-judge=data/study/x.json")
    with pytest.raises(ConfigError, match=r"'mix' is not among scoring.scorers=.* or scoring.combinations=\['other'\]"):
        load_config("cpu", "scoring.combinations.other=x.json, scoring.primary_by_benchmark.math500=mix")
    with pytest.raises(ConfigError, match=r"scoring.primary_by_benchmark: unknown benchmark 'math501'"):
        load_config("cpu", {"scoring": {"primary_by_benchmark": {"math501": "lm-judge"}}})
    with pytest.raises(ConfigError, match=r"config key .scoring.primary_by_benchmark. is a per-benchmark table; set its entries"):
        load_config("cpu", "scoring.primary_by_benchmark=lm-judge")


def test_a_pool_scorer_may_be_the_primary_but_is_never_a_sampling_scorer():
    """scoring.pool_scorers (the probe): computed on the committed pool by `generate score`, so it
    may be a benchmark's primary scorer without being built while sampling."""
    from optscale.scoring.scorers import build_scorers

    cfg = load_config("cpu-1.5b", "scoring.pool_scorers=[probe], scoring.primary_by_benchmark.gsm8k=probe")
    assert cfg.scoring.primary_for("gsm8k") == "probe" and "probe" not in cfg.scoring.scorers
    # asked for both, the sampling scorers leave the pool scorer out (it needs a pool to cross-fit on)
    assert [s.name for s in build_scorers(cfg, None, names=["probe", "self-certainty"])] == ["self-certainty"]
    with pytest.raises(ConfigError, match=r"'probe' is not among scoring.scorers=.*"):
        load_config("cpu-1.5b", "scoring.primary_by_benchmark.gsm8k=probe")
    with pytest.raises(ConfigError, match=r"scoring.pool_scorers: \['self-certainty'\] are also in scoring.scorers"):
        load_config("cpu-1.5b", "scoring.pool_scorers=[self-certainty]")
    with pytest.raises(ConfigError, match=r"scoring.pool_scorers\[0\]' = 'prob'.*'probe'"):
        load_config("cpu-1.5b", "scoring.pool_scorers=[prob]")
