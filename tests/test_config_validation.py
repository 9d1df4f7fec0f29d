"""Issue 29 items 9, 11 (import) and 12: every registry name and prompt file of a profile is checked
at load time with "did you mean"; sizes have ranges; the generate CLI and the notebook setup refuse
bad input with a clear message; an imported lone surrogate is named at import."""

import json
import subprocess
import sys

import pytest

from optscale import generate
from optscale.config import ConfigError, RunConfig, load_config


# -- item 9: registry names and prompt files -------------------------------------------------------
@pytest.mark.parametrize("override,key,hint", [
    ("fit.families=[truncnorm, betta]", "fit.families[1]", "'beta'"),
    ("predictor.head=krrr", "predictor.head", "'krr'"),
    ("predictor.backbone=minilmm", "predictor.backbone", "'minilm'"),
    ("sampling.backend=llama-ccp", "sampling.backend", "'llama-cpp'"),
    ("sampling.prompt_template=solv.txt", "sampling.prompt_template", "'solve.txt'"),
    ("scoring.scorers=[self-certainty, lm-judg]", "scoring.scorers[1]", "'lm-judge'"),
    ("scoring.judge_template=judg.txt", "scoring.judge_template", "'judge.txt'"),
    ("scoring.answer_judge_template=answer_judg.txt", "scoring.answer_judge_template", "'answer_judge.txt'"),
    ("systems.revise_template=revis.txt", "systems.revise_template", "'revise.txt'"),
    ("evaluation.auroc_policy=optscale-00", "evaluation.auroc_policy", "'optscale-0'"),
    ("evaluation.policies=[bon, majorty]", "evaluation.policies[1]", "'majority'"),
])
def test_unknown_registry_names_and_prompt_files_fail_at_load(override, key, hint):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", override)
    msg = str(e.value)
    assert f"config key {key!r}" in msg and "did you mean" in msg.lower() and hint in msg, msg


def test_a_prompt_file_outside_the_prompts_folder_is_refused():
    with pytest.raises(ConfigError, match="sampling.prompt_template.*optscale/prompts"):
        load_config("smoke", "sampling.prompt_template=../config/run.py")


def test_name_checks_import_no_heavy_backend():
    """The registries hold lazy ``module:attr`` strings: checking a name must not import vLLM,
    torch, transformers or llama.cpp."""
    code = ("import sys; from optscale.config import load_config; "
            "load_config('smoke', 'sampling.backend=vllm, scoring.scorers=[self-certainty, prm], predictor.backbone=lm'); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fit_family_is_gone():
    """``fit.family`` was documented as used by the policies and read by nothing: removed."""
    assert not hasattr(RunConfig().fit, "family")
    with pytest.raises(ConfigError, match="unknown config key 'fit.family'"):
        load_config("smoke", "fit.family=truncnorm")


@pytest.mark.parametrize("override,key", [
    ("sampling.n_samples.gsm8k=0", "sampling.n_samples"),
    ("sampling.max_new_tokens.math500=0", "sampling.max_new_tokens"),
    ("scoring.conf_window=0", "scoring.conf_window"),
    ("scoring.tail_tokens=-1", "scoring.tail_tokens"),
    ("evaluation.max_N=0", "evaluation.max_N"),
    ("data.selection_seed=-1", "data.selection_seed"),
])
def test_sizes_have_ranges(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("smoke", override)
    load_config("smoke", "data.max_questions.gsm8k=0")  # 0 questions = all of them, still allowed


# -- item 12: the generate CLI -----------------------------------------------------------------------
def _no_pools(tmp_path):
    return f"pools.pool_dir={tmp_path}"


@pytest.mark.parametrize("cmd", ["info", "merge", "regrade", "score", "combine", "pools"])
def test_unknown_dataset_is_an_error_with_did_you_mean(cmd, tmp_path, capsys):
    extra = ["--scorer", "self-certainty"] if cmd == "score" else []
    rc = generate.main([cmd, "--profile", "smoke", "--overrides", _no_pools(tmp_path), "--datasets", "math500,gsm8kk",
                        *extra])
    err = capsys.readouterr().err
    assert rc != 0
    assert "gsm8kk" in err and "did you mean 'gsm8k'" in err.lower(), err


def test_a_benchmark_outside_the_profile_is_named(tmp_path, capsys):
    rc = generate.main(["info", "--profile", "cpu-1.5b", "--overrides", _no_pools(tmp_path), "--datasets", "gsm8k,aime24"])
    err = capsys.readouterr().err
    assert rc != 0 and "aime24" in err and "data.benchmarks" in err, err


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv"])
def test_info_without_pools_is_a_clear_error(fmt, tmp_path, capsys):
    rc = generate.main(["info", "--profile", "smoke", "--overrides", _no_pools(tmp_path), "--format", fmt])
    err = capsys.readouterr().err
    assert rc == 1 and "no pool" in err and "python -m optscale.generate pools" in err, err


def test_a_bad_config_on_the_command_line_is_one_line(tmp_path, capsys):
    rc = generate.main(["info", "--profile", "smoke", "--overrides", "sampling.backend=nope"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("python -m optscale.generate info: ") and "sampling.backend" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,option", [
    (["pools", "--chunk", "0"], "--chunk"),
    (["pools", "--chunk", "-1"], "--chunk"),
    (["pools", "--flush-every", "0"], "--flush-every"),
    (["pools", "--questions-in-flight", "-2"], "--questions-in-flight"),
    (["pools", "--ray-workers", "-1"], "--ray-workers"),
    (["pools", "--hours", "-1"], "--hours"),
])
def test_cli_sizes_have_ranges(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        generate._parser().parse_args(argv)
    assert e.value.code == 2 and option in capsys.readouterr().err


def test_missing_pool_hint_names_a_real_command(tmp_path):
    from optscale.data.pools import PoolError, read_pool

    with pytest.raises(PoolError) as e:
        read_pool(tmp_path / "gsm8k.parquet")
    msg = str(e.value)
    assert "python -m optscale.generate pools" in msg and "optscale.data.pools generate" not in msg
    assert generate._parser().parse_args(["pools"]).cmd == "pools"


# -- item 12: notebook parameters --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"profile": 3}, "notebook parameter 'profile' = 3: expected a profile name (a string), got int"),
    ({"overrides": 5}, "notebook parameter 'overrides' = 5: expected a string of key=value overrides, got int"),
    ({"run_dir": None}, "notebook parameter 'run_dir' = None: expected a folder path (a string), got NoneType"),
])
def test_notebook_parameters_of_the_wrong_type_are_named(kwargs, message, tmp_path):
    from optscale.notebook import setup_notebook

    args = {"profile": "smoke", "run_dir": str(tmp_path / "run"), "overrides": "", **kwargs}
    with pytest.raises(ConfigError) as e:
        setup_notebook(**args)
    assert str(e.value).startswith(message + " (papermill -p reads numbers as numbers"), str(e.value)
    assert not (tmp_path / "run").exists()


def test_load_config_refuses_non_string_arguments():
    with pytest.raises(ConfigError, match="profile"):
        load_config(3)
    with pytest.raises(ConfigError, match="overrides"):
        load_config("smoke", 5)


# -- item 11 (import): a lone surrogate is named at import ---------------------------------------------
@pytest.mark.parametrize("field,record", [
    ("completion 1", {"unique_id": "q0", "answer": "4", "score": {"completions": ["4", "bad \ud83d x"], "scores": [[0.5], [0.4]]}}),
    ("'answer'", {"unique_id": "q0", "answer": "4\ud83d", "score": {"completions": ["4"], "scores": [[0.5]]}}),
    ("'unique_id'", {"unique_id": "q\udc00", "answer": "4", "score": {"completions": ["4"], "scores": [[0.5]]}}),
])
def test_lone_surrogate_is_refused_at_import_naming_file_row_and_field(field, record, tmp_path):
    from optscale.data.importers import PoolImportError, import_optscale_json, import_sal_jsonl

    ok = {"unique_id": "q1", "answer": "2", "score": {"completions": ["2"], "scores": [[0.9]]}}
    js = tmp_path / "scored.json"
    js.write_text(json.dumps([ok, record]))  # json.dumps writes the surrogate as the escape \ud83d
    with pytest.raises(PoolImportError) as e:
        import_optscale_json(js, "gsm8k", tokenizer=_Words())
    assert str(js) in str(e.value) and "question 1" in str(e.value) and field in str(e.value), str(e.value)
    assert "surrogate" in str(e.value)
    jl = tmp_path / "sal.jsonl"
    jl.write_text(json.dumps(ok) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(PoolImportError) as e:
        import_sal_jsonl(jl, "gsm8k", tokenizer=_Words())
    assert str(jl) in str(e.value) and "line 2" in str(e.value) and field in str(e.value), str(e.value)


class _Words:
    def encode(self, text):
        return text.split()
