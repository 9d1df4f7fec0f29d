"""The hidden-state probe verifier (optscale.scoring.probe): folds, cross-fitting, heads, GGUF cut."""

from __future__ import annotations

import numpy as np
import pytest

from optscale.scoring.probe import (ProbeHead, crossfit_probe_scores, fit_probe_head, question_digest,
                                    question_folds, truncated_gguf)


def _planted(n_q=30, n=8, d=20, signal=2.5, seed=0):
    rng = np.random.default_rng(seed)
    feats, correct = {}, {}
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    for q in range(n_q):
        y = rng.random(n) < rng.uniform(0.2, 0.8)
        x = rng.normal(size=(n, d)) + rng.normal(size=d)  # a per-question offset: the question's "topic"
        x += signal * np.outer(y.astype(float) - 0.5, w)
        feats[f"q{q}"], correct[f"q{q}"] = x, y.astype(int)
    return feats, correct


def test_question_folds_partition_and_are_stable_when_the_pool_grows():
    ids = [str(i) for i in range(50)]
    folds = question_folds(ids, 5, seed=0)
    assert sorted(q for f in folds for q in f) == sorted(ids)
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(folds) for b in folds[i + 1:])
    assert question_folds(ids, 5, seed=0) == folds
    # a question's fold is decided by its own id: the ordering inside the hash order stays the same
    grown = question_folds(ids + [str(i) for i in range(50, 80)], 5, seed=0)
    order = [q for f in folds for q in f]
    assert [q for f in grown for q in f if q in set(ids)] != [] and set(order) <= {q for f in grown for q in f}
    with pytest.raises(ValueError):
        question_folds(ids[:3], 5)


def test_crossfit_never_scores_a_question_its_head_saw_and_finds_a_planted_signal():
    from sklearn.metrics import roc_auc_score

    feats, correct = _planted()
    scores, meta, heads = crossfit_probe_scores(feats, correct, k=5, C=0.1)
    assert set(scores) == set(feats)
    for fm in meta:
        assert not set(fm["train_question_ids"]) & set(fm["scored_question_ids"])
        assert set(fm["train_question_ids"]) | set(fm["scored_question_ids"]) == set(feats)
    scored = [q for fm in meta for q in fm["scored_question_ids"]]
    assert sorted(scored) == sorted(feats)  # every question scored exactly once
    y = np.concatenate([correct[q] for q in feats])
    s = np.concatenate([scores[q] for q in feats])
    assert roc_auc_score(y, s) > 0.8
    # no signal: held-out AUROC near chance (a head that leaked its own test data would score high)
    feats0, correct0 = _planted(signal=0.0, seed=1)
    s0, _, _ = crossfit_probe_scores(feats0, correct0, k=5, C=0.1)
    y0 = np.concatenate([correct0[q] for q in feats0])
    assert abs(roc_auc_score(y0, np.concatenate([s0[q] for q in feats0])) - 0.5) < 0.1


def test_score_depends_on_the_sample_only():
    feats, correct = _planted(n_q=10)
    head = fit_probe_head(np.concatenate(list(feats.values())), np.concatenate(list(correct.values())))
    x = feats["q0"]
    alone = np.array([head.score(x[i:i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(head.score(x), alone)
    np.testing.assert_allclose(head.score(x[::-1])[::-1], alone)


def test_head_round_trips_without_pickle(tmp_path):
    feats, correct = _planted(n_q=10)
    head = fit_probe_head(np.concatenate(list(feats.values())), np.concatenate(list(correct.values())),
                          meta={"train_question_digests": [question_digest("What is 2+2?")]})
    path = head.save(tmp_path / "h.npz")
    back = ProbeHead.load(path)
    np.testing.assert_allclose(back.score(feats["q3"]), head.score(feats["q3"]), rtol=1e-5)
    assert back.meta["train_question_digests"] == [question_digest("  What is 2+2?\n")]
    with pytest.raises(ValueError, match="all correct or all wrong"):
        fit_probe_head(np.ones((4, 3)), np.ones(4))


def test_truncated_gguf_keeps_the_first_blocks(tmp_path):
    gguf = pytest.importorskip("gguf")
    src = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(src), arch="qwen2")
    w.add_block_count(4)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    for i in range(4):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.full(4, i, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cut = truncated_gguf(src, 2, out_dir=tmp_path / "cut")
    r = gguf.GGUFReader(str(cut))
    assert int(r.fields["qwen2.block_count"].contents()) == 2
    names = {t.name for t in r.tensors}
    assert names == {"token_embd.weight", "blk.0.attn_norm.weight", "blk.1.attn_norm.weight", "output_norm.weight"}
    np.testing.assert_array_equal(np.asarray(next(t for t in r.tensors if t.name == "blk.1.attn_norm.weight").data),
                                  np.full(4, 1, dtype=np.float32))
    assert truncated_gguf(src, 4) == src  # the full depth is the file itself
    with pytest.raises(ValueError, match="outside"):
        truncated_gguf(src, 5)


def test_headless_gguf_drops_the_vocabulary_and_cuts_the_embedding_and_output_rows(tmp_path):
    gguf = pytest.importorskip("gguf")
    from optscale.scoring.probe import HEADLESS_VOCAB, headless_gguf, token_embeddings

    src = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(src), arch="qwen2")
    w.add_block_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(20)])
    emb = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output.weight", -emb)
    w.add_tensor("blk.0.attn_norm.weight", np.full(4, 3, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = headless_gguf(src, out_dir=tmp_path / "cut")
    r = gguf.GGUFReader(str(out))
    assert str(bytes(r.fields["tokenizer.ggml.model"].parts[-1]), "utf-8") == "none"
    assert "tokenizer.ggml.tokens" not in r.fields and int(r.fields["qwen2.vocab_size"].contents()) == HEADLESS_VOCAB
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    np.testing.assert_array_equal(t["token_embd.weight"], emb[:HEADLESS_VOCAB])
    np.testing.assert_array_equal(t["output.weight"], -emb[:HEADLESS_VOCAB])
    np.testing.assert_array_equal(t["blk.0.attn_norm.weight"], np.full(4, 3, dtype=np.float32))
    np.testing.assert_array_equal(token_embeddings(src), emb)  # the whole matrix, from the source
    assert headless_gguf(src, out_dir=tmp_path / "cut") == out  # written once


@pytest.mark.slow
def test_input_embeddings_through_the_headless_gguf_give_the_same_features():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (bash scripts/setup.sh llama-cpp)")
    from optscale.sampling.llama_cpp import resolve_gguf
    from optscale.scoring.probe import HiddenStateExtractor, truncated_gguf

    cut = truncated_gguf(resolve_gguf("qwen2.5-coder-0.5b-instruct-q4"), 4)
    feats, toks = {}, {}
    for mode in (False, True):
        ex = HiddenStateExtractor(cut, n_ctx=512, n_threads=1, input_embeddings=mode)
        try:
            toks[mode] = [ex.tokenize("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n", special=True),
                          ex.tokenize(" 2 + 3 = 5. The answer is 5."), ex.tokenize(" It is 6.")]
            feats[mode] = ex.features(toks[mode][0], toks[mode][1:])
        finally:
            ex.close()
    assert toks[True] == toks[False]  # the vocabulary-only load tokenizes as the model did
    np.testing.assert_allclose(feats[True], feats[False], rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats[True][0], feats[True][1])


@pytest.mark.slow
def test_extractor_features_are_per_sample_and_deterministic():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (bash scripts/setup.sh llama-cpp)")
    from optscale.sampling.llama_cpp import resolve_gguf
    from optscale.scoring.probe import HiddenStateExtractor

    ex = HiddenStateExtractor(resolve_gguf("qwen2.5-coder-0.5b-instruct-q4"), n_ctx=512, n_threads=1)
    try:
        prompt = ex.tokenize("Question: what is 2 + 3?\nAnswer:")
        a, b = ex.tokenize(" 2 + 3 = 5. The answer is 5."), ex.tokenize(" 2 + 3 = 6. The answer is 6.")
        f = ex.features(prompt, [a, b])
        assert f.shape == (2, 2 * ex.n_embd) and np.isfinite(f).all()
        f_b = ex.features(prompt, [b])  # a sample's features do not depend on the others
        np.testing.assert_allclose(f_b[0], f[1], rtol=1e-3, atol=1e-3)
        assert not np.allclose(f[0], f[1])
    finally:
        ex.close()


def test_learning_curve_rises_with_training_questions_on_a_planted_signal():
    from optscale.scoring.probe import probe_learning_curve

    feats, correct = _planted(n_q=40, d=30, signal=2.0)
    lc = probe_learning_curve(feats, correct, train_questions=[2, 30], k=4, C=0.1, repeats=2)
    assert list(lc["train_questions"]) == [2, 30]
    assert lc["train_samples"].iloc[1] == 30 * 8
    assert lc["auroc_within"].iloc[1] > lc["auroc_within"].iloc[0] + 0.03
    assert lc["auroc_within"].iloc[1] > 0.75


def planted_probe_pool(tmp_path, monkeypatch, seed=0):
    """A fake-sampler pool of 10 questions x 4 whose probe features are planted (a noisy copy of the
    correctness and 3 noise columns; no model): (config, pool path, question texts, rng)."""
    import optscale.sampling.llama_cpp as llama_cpp_module
    import optscale.scoring.probe as probe
    from optscale.data.pools import read_pool

    from test_evaluation import _fake_pool

    cfg, path = _fake_pool(tmp_path, n_q=10, n=4)
    df = read_pool(path).df
    rng = np.random.default_rng(seed)
    planted = {q: np.c_[g.sort_values("sample_index")["correct"].to_numpy(float) + rng.normal(0, 0.5, len(g)),
                        rng.normal(size=(len(g), 3))] for q, g in df.groupby("question_id")}
    monkeypatch.setenv("OPTSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probe, "pool_features", lambda *a, **k: planted)
    monkeypatch.setattr(llama_cpp_module, "resolve_gguf", lambda model: tmp_path / "model.gguf")
    monkeypatch.setattr(probe, "_block_count", lambda p: 28)
    return cfg, path, {f"q{i}": f"What is {i}+1?" for i in range(10)}, rng


def test_pool_scoring_writes_the_column_with_fold_metadata_and_heads_that_refuse_their_questions(
        tmp_path, monkeypatch):
    """score_pool_with_probe on a fake-sampler pool, features planted (no model): every sample scored
    by a head that never saw its question; the metadata names each fold's train / scored questions;
    the all-question head refuses a question it was trained on."""
    import optscale.scoring.probe as probe
    from optscale.data.pools import read_pool

    cfg, path, questions, rng = planted_probe_pool(tmp_path, monkeypatch, seed=0)
    out = probe.score_pool_with_probe(path, cfg, questions, k=5, head_dir=tmp_path / "heads")
    assert out["written"]
    pool = read_pool(path)
    assert "probe" in pool.scorers and not pool.df["score__probe"].isna().any()
    folds = pool.meta["scorers"]["probe"]["folds"]
    assert len(folds) == 5
    assert sorted(q for f in folds for q in f["scored_question_ids"]) == sorted(questions)
    for f in folds:
        assert not set(f["train_question_ids"]) & set(f["scored_question_ids"])
    head = probe.ProbeHead.load(tmp_path / "heads" / "all.npz")
    assert sorted(head.meta["train_question_ids"]) == sorted(questions)
    assert probe.question_digest("What is 3+1?") in head.meta["train_question_digests"]
    for i in range(5):
        assert (tmp_path / "heads" / f"fold{i}.npz").is_file()


@pytest.mark.slow
def test_pool_features_cache_per_question_with_their_timing_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (bash scripts/setup.sh llama-cpp)")
    import pandas as pd

    from optscale.config import load_config
    from optscale.scoring import probe

    monkeypatch.setenv("OPTSCALE_CACHE", str(tmp_path))
    sampling = load_config("smoke").sampling  # the 0.5B GGUF
    df = pd.DataFrame({"question_id": ["a", "a", "b", "b", "c"], "sample_index": [1, 0, 0, 1, 0],
                       "text": [" 2 + 3 = 6.", " 2 + 3 = 5.", " 7 - 4 = 3.", " 7 - 4 = 2.", " 9 / 3 = 3."]})
    questions = {"a": "What is 2 + 3?", "b": "What is 7 - 4?", "c": "What is 9 / 3?"}
    part = probe.pool_features(df, questions, sampling, "tiny", "gsm8k", layers=[2], n_threads=1,
                               question_ids=["a", "c"], progress=False)
    assert set(part) == {"a", "c"} and part["a"].shape[0] == 2 and part["c"].shape[0] == 1
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 2 and not list(tmp_path.rglob("*.tmp.npz"))
    z = np.load(next(f for f in files if f.name.endswith("_a.npz")))
    assert list(z["sample_index"]) == [0, 1] and int(z["n_threads"]) == 1 and int(z["n_tokens"]) > 0
    timing = probe.cached_extraction_timing("tiny", "gsm8k", [2])
    g = timing["by_threads"]["1"]
    assert set(timing["by_threads"]) == {"1"} and g["questions"] == 2 and g["samples"] == 3 and g["tokens"] > 0
    assert timing["core_seconds_per_sample"] == pytest.approx(g["seconds"] / 3)
    # a later call extracts only what is missing: "b"; "a" and "c" come from the cache unchanged
    full = probe.pool_features(df, questions, sampling, "tiny", "gsm8k", layers=[2], n_threads=1, progress=False)
    assert set(full) == set(questions) and len(list(tmp_path.rglob("*.npz"))) == 3
    np.testing.assert_array_equal(full["a"], part["a"])
    monkeypatch.setattr(probe, "truncated_gguf", lambda *a, **k: (_ for _ in ()).throw(AssertionError("extracted")))
    again = probe.pool_features(df, questions, sampling, "tiny", "gsm8k", layers=[2], progress=False)
    np.testing.assert_array_equal(again["b"], full["b"])


def test_pool_scoring_with_an_external_training_set_records_it_and_refuses_a_shared_question(tmp_path, monkeypatch):
    """``external`` (another pool's questions, e.g. GSM8K when scoring MATH-500): in every fold's
    training data and the all-question head's, named in the metadata, and its questions refused by
    that head too; an external set sharing a question's text with the pool is refused before anything
    is written."""
    import optscale.scoring.probe as probe
    from optscale.data.pools import read_pool

    cfg, path, questions, rng = planted_probe_pool(tmp_path, monkeypatch, seed=1)
    y = {f"e{i}": np.array([1, 0, 1, 0]) for i in range(6)}
    ext = probe.ProbeTrainingSet("other", {q: np.c_[c + rng.normal(0, 0.5, 4), rng.normal(size=(4, 3))] for q, c in y.items()},
                                 y, {q: f"How many apples, case {q}?" for q in y})

    shared = probe.ProbeTrainingSet("other", ext.features, ext.correct, {**ext.questions, "e0": "What is 3+1?"})
    with pytest.raises(ValueError, match=r"external training set other shares 1 question\(s\) with the pool"):
        probe.score_pool_with_probe(path, cfg, questions, k=5, head_dir=tmp_path / "heads", external=[shared])
    assert "probe" not in read_pool(path).scorers

    assert probe.score_pool_with_probe(path, cfg, questions, k=5, head_dir=tmp_path / "heads", external=[ext])["written"]
    meta = read_pool(path).meta["scorers"]["probe"]
    assert meta["external"] == {"other": 6}
    assert all(f["external"] == {"other": sorted(y)} for f in meta["folds"])
    head = probe.ProbeHead.load(tmp_path / "heads" / "all.npz")
    assert head.meta["external_question_ids"] == {"other": sorted(y)}
    assert head.meta["n_train"] == 4 * (10 + 6)
    assert probe.question_digest("How many apples, case e3?") in head.meta["train_question_digests"]


def test_generate_score_refuses_an_external_benchmark_without_cached_features(tmp_path, monkeypatch, capsys):
    """`generate score --scorer probe --probe-external amc23` with no cached AMC23 features stops
    before any model load, naming the pool, the missing questions and the command that extracts them."""
    from optscale import generate

    monkeypatch.setenv("OPTSCALE_CACHE", str(tmp_path / "cache"))
    rc = generate.main(["score", "--scorer", "probe", "--datasets", "gsm8k", "--probe-layers", "16",
                        "--probe-external", "amc23"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "amc23.parquet: no cached probe features (layers [16]) for 40 of 40 questions" in err
    assert "--scorer probe --datasets amc23 --probe-layers 16" in err
    assert generate.main(["score", "--scorer", "probe", "--datasets", "gsm8k", "--probe-external", "gsm8k"]) == 2
    assert "cannot also be its external training set" in capsys.readouterr().err
