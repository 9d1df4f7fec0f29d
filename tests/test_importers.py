"""Importer round trips and bad files (small files created here)."""

import json

import numpy as np
import pytest

from optscale.data.importers import PoolImportError, export_optscale_json, import_optscale_json, import_sal_jsonl


def questions():
    return [
        {"unique_id": "a", "answer": "4", "score": {
            "completions": ["so \\boxed{4}", "hence \\boxed{5}"], "scores": [[0.9, 0.7], [0.2]],
            "last_scores": [0.7, 0.2], "completion_tokens": [12, 7]}},
        {"unique_id": "b", "answer": "Janet ... #### 1,000", "score": {
            "completions": ["\\boxed{1000}", "\\boxed{10}"], "scores": [[1.0], [0.5, 0.5]],
            "last_scores": [1.0, 0.5], "completion_tokens": [3, 4]}},
    ]


def test_optscale_json_round_trip(tmp_path):
    p = tmp_path / "scored_x_par_math_64.json"
    p.write_text(json.dumps(questions()))
    pool = import_optscale_json(p, "math500", scorer="prm")
    assert pool.n_questions == 2 and pool.n_per_question == 2
    assert np.allclose(pool.scores("prm"), [[0.8, 0.2], [1.0, 0.5]])
    assert pool.correct().tolist() == [[True, False], [True, False]]
    assert pool.tokens().tolist() == [[12, 7], [3, 4]]
    back = tmp_path / "back.json"
    export_optscale_json(pool, back, "prm")
    again = import_optscale_json(back, "math500", scorer="prm")
    assert np.allclose(again.scores("prm"), pool.scores("prm"))
    assert again.df["text"].tolist() == pool.df["text"].tolist()


def test_sal_jsonl_round_trip_and_truncated_line(tmp_path):
    p = tmp_path / "pool.jsonl"
    lines = [json.dumps({"unique_id": q["unique_id"], "answer": q["answer"], **q["score"]}) for q in questions()]
    p.write_text("\n".join(lines) + "\n")
    pool = import_sal_jsonl(p, "gsm8k")
    assert pool.n_questions == 2 and pool.correct().tolist() == [[True, False], [True, False]]
    p.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")
    with pytest.raises(PoolImportError, match=r"pool.jsonl: line 2: not valid JSON"):
        import_sal_jsonl(p, "gsm8k")
    part = import_sal_jsonl(p, "gsm8k", keep_partial=True)
    assert part.n_questions == 1 and "line 2" in part.meta["import_error"]


def test_bad_optscale_files(tmp_path):
    p = tmp_path / "t.json"
    txt = json.dumps(questions(), indent=1)
    p.write_text(txt[: len(txt) * 3 // 4])
    with pytest.raises(PoolImportError, match=r"t.json: line \d+, column \d+"):
        import_optscale_json(p, "math500")
    part = import_optscale_json(p, "math500", keep_partial=True)
    assert part.n_questions == 1 and "import_error" in part.meta
    bad = questions()
    bad[1]["score"]["scores"] = [[1.0]]
    p.write_text(json.dumps(bad))
    with pytest.raises(PoolImportError, match="question 1: 2 completions but 1 score lists"):
        import_optscale_json(p, "math500")
    bad[1]["score"]["scores"] = [[1.0], [1.5]]
    p.write_text(json.dumps(bad))
    with pytest.raises(PoolImportError, match="question 1: score list 1"):
        import_optscale_json(p, "math500")


# -- issue 17 item 5: empty files, missing gold, token-count source, parse before grading --------
def _sal_line(q, **extra):
    return json.dumps({**{k: v for k, v in q.items() if k != "score"}, **q["score"], **extra})


@pytest.mark.parametrize("content,keep_partial,message", [
    ("[]", False, "t.json: the file holds no questions"),
    ("", True, "t.json: the file is empty"),
    ("  \n", False, "t.json: the file is empty"),
    ('[{"unique_id": "a", "sc', True, "t.json: line 1, column 21: Unterminated string starting at; no complete "
                                     "question before it"),
    ('{"a": 1}', False, "t.json: expected a JSON list of questions, got dict"),
    ("[3]", False, "t.json: question 0: expected an object, got int"),
])
def test_optscale_json_empty_or_useless_files(tmp_path, content, keep_partial, message):
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(PoolImportError) as e:
        import_optscale_json(p, "math500", keep_partial=keep_partial)
    assert str(e.value) == f"{p}: {message.split(': ', 1)[1]}"


@pytest.mark.parametrize("keep_partial", [False, True])
def test_sal_jsonl_empty_file(tmp_path, keep_partial):
    p = tmp_path / "pool.jsonl"
    p.write_text("\n")
    with pytest.raises(PoolImportError, match=r"pool.jsonl: the file holds no questions"):
        import_sal_jsonl(p, "gsm8k", keep_partial=keep_partial)


def test_missing_gold_is_an_error_unless_passed(tmp_path):
    qs = questions()
    del qs[1]["answer"]
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(_sal_line(q) for q in qs) + "\n")
    with pytest.raises(PoolImportError) as e:
        import_sal_jsonl(p, "math500")
    assert str(e.value) == (f"{p}: line 2: question 'b' has no gold answer (field 'answer'; "
                            "pass gold={question_id: answer})")
    with pytest.raises(PoolImportError, match="line 2: question 'b' has no gold answer .*not in the gold answers"):
        import_sal_jsonl(p, "math500", gold={"a": "4"})
    pool = import_sal_jsonl(p, "math500", gold={"b": "1000"})
    assert pool.correct().tolist() == [[True, False], [True, False]] and pool.matrix("gold")[1, 0] == "1000"


def test_token_count_source_is_recorded(tmp_path):
    qs = questions()
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(_sal_line(q) for q in qs) + "\n")
    assert import_sal_jsonl(p, "gsm8k").meta["token_count"] == "completion_tokens (from the file)"
    for q in qs:
        del q["score"]["completion_tokens"]
    p.write_text("\n".join(_sal_line(q) for q in qs) + "\n")
    with pytest.warns(UserWarning, match="4 of 4 samples have no completion_tokens"):
        pool = import_sal_jsonl(p, "gsm8k")
    assert pool.meta["token_count"] == "whitespace-separated words: not model tokens"
    assert pool.tokens().tolist() == [[2, 2], [1, 1]]

    class CharTokenizer:  # one token per character
        def encode(self, text):
            return list(text)

    pool = import_sal_jsonl(p, "gsm8k", tokenizer=CharTokenizer())
    assert pool.meta["token_count"] == "tokenizer CharTokenizer"
    assert pool.tokens().tolist() == [[12, 15], [12, 10]]
    with pytest.raises(PoolImportError, match=r"pool.jsonl: 4 sample\(s\) have no completion_tokens and the tokenizer "
                                              r"'no/such-model' could not be loaded"):
        import_sal_jsonl(p, "gsm8k", generator="no/such-model")


def test_whole_file_is_checked_before_any_grading(tmp_path, monkeypatch):
    """A fault on the last line is raised before a single sample is graded."""
    import optscale.data.importers as imp

    graded = []

    def regrade_frame(df):
        graded.extend(df["text"])
        return real(df)

    real = imp.regrade_frame
    monkeypatch.setattr(imp, "regrade_frame", regrade_frame)
    lines = [_sal_line(q, unique_id=f"{q['unique_id']}{i}") for i in range(20) for q in questions()]
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(lines) + "\n" + lines[0][:30] + "\n")
    with pytest.raises(PoolImportError, match=r"pool.jsonl: line 41: not valid JSON"):
        import_sal_jsonl(p, "gsm8k")
    assert graded == []
    pool = import_sal_jsonl(p, "gsm8k", keep_partial=True)
    assert pool.n_questions == 40 and len(graded) == 80 and "line 41" in pool.meta["import_error"]
    assert pool.meta["grading"]["version"] >= 2 and pool.meta["grading"]["unresolved_samples"] == 0


def test_duplicate_question_is_named(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(_sal_line(q) for q in questions() + questions()[:1]) + "\n")
    with pytest.raises(PoolImportError) as e:
        import_sal_jsonl(p, "gsm8k")
    assert str(e.value) == f"{p}: line 3: question 'a' appears again (first at {p}: line 1)"
