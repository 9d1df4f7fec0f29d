import json

import numpy as np
import pytest

from optscale.data.benchmarks import (BENCHMARK_FILES, DataError, load_benchmark, load_predictor_labels,
                                      resolve_data_dir)

EXPECTED = {"math500": 500, "gsm8k": 1319, "aime24": 30, "aime25": 30, "amc23": 40}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_all_five_benchmarks_load(name, data_dir):
    probs = load_benchmark(name, data_dir)
    assert len(probs) == EXPECTED[name]
    assert all(p.question and p.answer for p in probs)
    assert len({p.id for p in probs}) == len(probs)
    assert [p.index for p in probs] == list(range(len(probs)))
    assert load_benchmark(name, data_dir, limit=3) == probs[:3]


def test_known_gold_answers(data_dir):
    g = load_benchmark("gsm8k", data_dir)
    assert g[0].answer == "18"  # Janet's ducks, parsed from the '####' line
    assert load_benchmark("aime24", data_dir)[0].answer == "204"
    assert load_benchmark("aime25", data_dir)[0].answer == "70"
    assert load_benchmark("amc23", data_dir)[0].answer == "27"
    m = load_benchmark("math500", data_dir)
    assert m[0].meta["subject"] and m[0].id.startswith("test/")


def test_gsm8k_answers_are_numbers(data_dir):
    for p in load_benchmark("gsm8k", data_dir):
        float(p.answer)


def test_predictor_labels(data_dir):
    probs, labels = load_predictor_labels(data_dir)
    assert len(probs) == 4501 and labels.shape == (4501, 2)
    assert np.all((labels[:, 0] >= 0) & (labels[:, 0] <= 1)) and np.all(labels[:, 1] >= 0)


def _write(tmp_path, name, obj, raw=None):
    d = tmp_path / "test_prompts"
    d.mkdir(exist_ok=True)
    (d / BENCHMARK_FILES[name].filename).write_text(raw if raw is not None else json.dumps(obj))
    return tmp_path


def test_bad_files_name_file_row_field(tmp_path):
    root = _write(tmp_path, "gsm8k", [{"question": "q", "answer": "x #### 3"}, {"question": "q2", "answer": "no marker"}])
    with pytest.raises(DataError, match=r"gsm8k_test.json: row 1: field 'answer'"):
        load_benchmark("gsm8k", root)
    root = _write(tmp_path, "aime24", [{"id": "1", "problem": "p", "answer": ""}])
    with pytest.raises(DataError, match=r"aime24.json: row 0: field 'answer'"):
        load_benchmark("aime24", root)
    root = _write(tmp_path, "amc23", None, raw='[{"id": "1", "problem": "p", "answer": "3"}, {"id":')
    with pytest.raises(DataError, match=r"amc23.json: not valid JSON \(line 1"):
        load_benchmark("amc23", root)
    root = _write(tmp_path, "aime25", [{"answer": "3"}])
    with pytest.raises(DataError, match=r"row 0: no question"):
        load_benchmark("aime25", root)
    with pytest.raises(DataError, match="file not found"):
        load_benchmark("math500", root)


def test_missing_data_dir_is_clear(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("OPTSCALE_DATA_DIR", str(tmp_path / "nope2"))
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir()


def test_bad_label_file(tmp_path, data_dir):
    import shutil

    (tmp_path / "predictor_labels").mkdir()
    shutil.copy(data_dir / "predictor_labels" / "train_data.json", tmp_path / "predictor_labels")
    labels = json.loads((data_dir / "predictor_labels" / "train_mu_sigma.json").read_text())
    labels[7] = ["nan", "0.1"]
    (tmp_path / "predictor_labels" / "train_mu_sigma.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match=r"train_mu_sigma.json: row 7: field 'mean' is not finite"):
        load_predictor_labels(tmp_path)
    (tmp_path / "predictor_labels" / "train_mu_sigma.json").write_text(json.dumps(labels[:10]))
    with pytest.raises(DataError, match="10 label rows for 4501 problems"):
        load_predictor_labels(tmp_path)


@pytest.mark.parametrize("row,message", [
    (["0.7", "-0.2"], "row 3: field 'std' = '-0.2' is outside [0, 0.5]"),
    (["7.0", "0.1"], "row 3: field 'mean' = '7.0' is outside [0, 1]"),
    ([0.5, 0.6], "row 3: field 'std' = 0.6 is outside [0, 0.5]"),
])
def test_predictor_labels_out_of_range(tmp_path, data_dir, row, message):
    """Issue 17 item 6: a std of -0.2 or a mean of 7.0 used to load silently."""
    import shutil

    (tmp_path / "predictor_labels").mkdir()
    shutil.copy(data_dir / "predictor_labels" / "train_data.json", tmp_path / "predictor_labels")
    labels = json.loads((data_dir / "predictor_labels" / "train_mu_sigma.json").read_text())
    labels[3] = row
    path = tmp_path / "predictor_labels" / "train_mu_sigma.json"
    path.write_text(json.dumps(labels))
    with pytest.raises(DataError) as e:
        load_predictor_labels(tmp_path)
    assert str(e.value) == f"{path}: {message}; the labels are the mean and std of sample scores, which live in [0, 1]"
