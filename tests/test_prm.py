"""The PRM scorer's code path with a tiny, randomly initialised model of the PRM's architecture.

The tiny checkpoint (Qwen2 decoder + Linear-ReLU-Linear reward head, a small byte-level BPE
tokenizer with ``<extra_0>`` and a Qwen-style chat template) is written to a temporary directory
and loaded through the same ``from_pretrained`` path as Qwen/Qwen2.5-Math-PRM-7B.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from optscale.config import load_config  # noqa: E402
from optscale.data.grading import split_steps  # noqa: E402
from optscale.data.pools import POOL_SCHEMA, read_pool, score_pool, write_pool  # noqa: E402
from optscale.sampling.base import Completion  # noqa: E402
from optscale.scoring.scorers import SCORERS, aggregate_steps, get_scorer  # noqa: E402

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXTS = [
    "First we add 2 and 3.\n\nThat gives 5.\n\nSo the answer is \\boxed{5}.",
    "The answer is \\boxed{7}.",
    "Step one.\n\n\n\nStep two has <extra_0> inside.\n\nStep three.\n\nStep four: \\boxed{1}.",
    "",
]


@pytest.fixture(scope="module")
def tiny_prm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    from optscale.scoring.prm import prm_model_class

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = TEXTS * 5 + ["Please reason step by step, and put your final answer within \\boxed{}.",
                          "What is 2 + 3? system user assistant"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=["<|im_start|>", "<extra_0>"])
    hf_tok.chat_template = QWEN_TEMPLATE
    cfg = Qwen2Config(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    model = prm_model_class()(cfg)
    with torch.no_grad():  # spread the head's outputs so step rewards differ visibly
        model.score[2].weight.mul_(20.0)
    out = tmp_path_factory.mktemp("tiny_prm")
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def _scoring(tiny_prm_dir, **over):
    return load_config("cpu", {"scoring.prm_model": str(tiny_prm_dir), **over}).scoring


@pytest.fixture(scope="module")
def scorer(tiny_prm_dir):
    from optscale.scoring.prm import PRMScorer

    return PRMScorer(_scoring(tiny_prm_dir, **{"scoring.prm_batch_size": 3}), device="cpu")


def _comps(texts=TEXTS):
    return [Completion(text=t, n_tokens=max(1, len(t) // 4), finish_reason="stop", seed=i) for i, t in enumerate(texts)]


def test_checkpoint_layout_matches_the_released_prm(tiny_prm_dir):
    from optscale.scoring.prm import prm_model_class

    keys = set(prm_model_class()(__import__("transformers").Qwen2Config(
        vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1)).state_dict())
    # the parameter names of Qwen/Qwen2.5-Math-PRM-7B's safetensors
    assert {"model.embed_tokens.weight", "score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= keys
    assert "lm_head.weight" not in keys


def test_step_split_and_rewards_in_unit_interval(scorer):
    res = scorer.score("What is 2 + 3?", _comps())
    for t, r in zip(TEXTS, res):
        assert len(r.step_scores) == len(split_steps(t))  # one reward per blank-line step
        assert all(0.0 <= s <= 1.0 for s in r.step_scores)
        assert r.score == pytest.approx(np.mean(r.step_scores))  # the paper's aggregation
    assert len(res[2].step_scores) == 4  # a literal <extra_0> in the text is not a step boundary
    assert len({round(r.score, 6) for r in res}) > 1  # a random model still tells samples apart


def test_batching_and_padding_do_not_change_scores(scorer, tiny_prm_dir):
    from optscale.scoring.prm import PRMScorer

    one = PRMScorer(_scoring(tiny_prm_dir, **{"scoring.prm_batch_size": 1}), model=scorer.model,
                    tokenizer=scorer.tokenizer, device="cpu")
    a = scorer.score("What is 2 + 3?", _comps())
    b = one.score("What is 2 + 3?", _comps())
    for x, y in zip(a, b):
        assert np.allclose(x.step_scores, y.step_scores, atol=1e-5)
    # an independent unbatched forward pass of one sample
    ids, _ = scorer.encode("What is 2 + 3?", TEXTS[0])
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([ids]))[0]
    probs = torch.softmax(logits.float(), -1)[:, 1]
    ref = probs[torch.tensor(ids) == scorer.sep_id].tolist()
    assert np.allclose(a[0].step_scores, ref, atol=1e-5)


@pytest.mark.parametrize("how", ["mean", "min", "last", "prod"])
def test_aggregations(scorer, tiny_prm_dir, how):
    from optscale.scoring.prm import PRMScorer

    s = PRMScorer(_scoring(tiny_prm_dir, **{"scoring.aggregation": how}), model=scorer.model,
                  tokenizer=scorer.tokenizer, device="cpu")
    for r in s.score("Q", _comps()):
        assert r.score == pytest.approx(aggregate_steps(r.step_scores, how))
        assert 0.0 <= r.score <= 1.0


def test_registered_and_bad_separator_rejected(scorer, tiny_prm_dir):
    assert SCORERS.get("prm").__name__ == "PRMScorer"
    built = get_scorer("prm", _scoring(tiny_prm_dir), model=scorer.model, tokenizer=scorer.tokenizer, device="cpu")
    assert built.name == "prm" and built.describe()["model"] == str(tiny_prm_dir)

    class NoSep:
        pad_token_id = 0
        eos_token_id = 0

        def encode(self, s, add_special_tokens=False):
            return [1, 2, 3]

    from optscale.scoring.prm import PRMScorer

    with pytest.raises(ValueError, match="one token"):
        PRMScorer(_scoring(tiny_prm_dir), model=scorer.model, tokenizer=NoSep(), device="cpu")


def _tiny_pool(path, texts_by_q):
    rows = []
    for qi, (qid, texts) in enumerate(texts_by_q.items()):
        for k, t in enumerate(texts):
            rows.append({"dataset": "gsm8k", "question_id": qid, "question_index": qi, "sample_index": k, "text": t,
                         "answer": None, "gold": "5", "correct": False, "n_tokens": 3, "finish_reason": "stop",
                         "seed": k, "token_logprobs": [-0.1, -0.2, -0.3], "token_confidence": [-1.0, -1.0, -1.0],
                         "score__self-certainty": 0.25 + 0.1 * k, "step_scores__self-certainty": [0.25 + 0.1 * k]})
    df = pd.DataFrame(rows)
    assert [f.name for f in POOL_SCHEMA] == list(df.columns[: len(POOL_SCHEMA)])
    return write_pool(df, {"dataset": "gsm8k", "generator": {"backend": "test"}, "scorers": {}}, path)


def test_score_pool_adds_prm_column_without_touching_others(scorer, tmp_path):
    path = _tiny_pool(tmp_path / "gsm8k.parquet", {"q0": TEXTS[:3], "q1": TEXTS[1:4]})
    before = read_pool(path).df.copy()
    score_pool(path, scorer, {"q0": "What is 2 + 3?", "q1": "Name 7."}, progress=False)
    pool = read_pool(path)
    assert pool.scorers == ["prm", "self-certainty"]
    pd.testing.assert_series_equal(pool.df["score__self-certainty"], before["score__self-certainty"])
    s = pool.scores("prm")
    assert s.shape == (2, 3) and np.all((s >= 0) & (s <= 1))
    direct = scorer.score("What is 2 + 3?", _comps(TEXTS[:3]))
    assert np.allclose(s[0], [r.score for r in direct], atol=1e-6)
    assert pool.meta["scorers"]["prm"]["model"] == scorer.config.prm_model
    # re-scoring is a no-op for a complete column; nothing else changes
    score_pool(path, scorer, {"q0": "What is 2 + 3?", "q1": "Name 7."}, progress=False)
    again = read_pool(path)
    pd.testing.assert_frame_equal(again.df, pool.df)
