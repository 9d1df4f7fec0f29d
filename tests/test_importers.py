"""Importer round trips and bad files (small files created here)."""

import json

import numpy as np
import pytest

from optscale.importers import PoolImportError, export_optscale_json, import_optscale_json, import_sal_jsonl


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
