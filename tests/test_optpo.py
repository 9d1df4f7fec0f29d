"""OptPO: the Bayesian sequential vote stops at the right sample on hand-made streams; the
pseudo-labelled update moves a tiny random model toward the consensus rollouts."""

import numpy as np
import pytest
from scipy import stats

from optscale.systems import optpo
from optscale.data.pools import replay_orders


def test_posterior_closed_form():
    # unanimous k votes, uniform prior: 1 - 2^-(k+1)
    for k in range(0, 8):
        assert optpo.consensus_posterior(k, 0) == pytest.approx(1 - 2.0 ** -(k + 1))
    # against scipy's beta survival function
    assert optpo.consensus_posterior(5, 2, prior=0.5) == pytest.approx(stats.beta(5.5, 2.5).sf(0.5))
    assert optpo.consensus_posterior(3, 3) == pytest.approx(0.5)
    assert optpo.consensus_posterior(1, 2) < 0.5  # leader vs all others can be behind
    with pytest.raises(ValueError):
        optpo.consensus_posterior(-1, 2)


def test_unanimous_stream_stops_at_fourth_sample():
    r = optpo.sequential_vote(["5"] * 10, threshold=0.95)
    assert r.stopped and r.n_used == 4 and r.consensus == "5"
    assert optpo.sprt_stop_index(["5"] * 10, 0.95) == 3
    assert r.posterior == pytest.approx([0.75, 0.875, 0.9375, 0.96875])


def test_contested_stream_stops_later():
    # votes 5,7,5,5,5,5,5: posteriors .75 .5 .6875 .8125 .890625 .9375 .96484 -> stop at the 7th
    stream = ["5", "7", "5", "5", "5", "5", "5", "5"]
    r = optpo.sequential_vote(stream, threshold=0.95)
    assert r.n_used == 7 and r.consensus == "5"
    assert r.posterior == pytest.approx([0.75, 0.5, 11 / 16, 26 / 32, 57 / 64, 120 / 128, 247 / 256])
    # a stricter threshold needs more votes than the stream has
    r2 = optpo.sequential_vote(stream, threshold=0.99)
    assert not r2.stopped and r2.n_used == len(stream)


def test_equivalent_answers_pool_their_votes_and_none_abstains():
    stream = ["1/2", None, "0.5", "\\frac{1}{2}", "3", "0.5", "1/2"]
    r = optpo.sequential_vote(stream, threshold=0.95)
    # votes for 1/2 after samples 1,3,4,6,7; the "3" at sample 5 delays the stop
    # (4,1) -> .890625, (5,1) -> .9375 ... never reaches .95 in 7 samples
    assert not r.stopped and r.consensus == "1/2"
    r = optpo.sequential_vote(stream, threshold=0.9)
    assert r.stopped and r.n_used == 4  # (3 votes, 0 against) -> .9375 at the 4th sample
    assert optpo.sequential_vote([None, None], 0.9).consensus is None


def test_against_rest_counts_every_other_rollout():
    # 5,7,5,5,5,5,5: vs runner-up stops at 7 (see above); vs rest the same here (one dissent) ...
    stream = ["5", "7", "5", "5", "5", "5", "5", "5"]
    assert optpo.sequential_vote(stream, 0.95, against="rest").n_used == 7
    # ... but a third answer also counts against the leader
    stream = ["5", "7", "9", "5", "5", "5", "5", "5", "5", "5"]
    assert optpo.sequential_vote(stream, 0.95, against="runner-up").n_used == 8  # (6 vs 1): .9648
    r = optpo.sequential_vote(stream, 0.95, against="rest")  # (7 vs 2): .9453 < .95, (8 vs 2): .9673
    assert r.n_used == 10 and r.posterior[-2:] == pytest.approx([stats.beta(8, 3).sf(0.5), stats.beta(9, 3).sf(0.5)])


def test_min_and_max_samples():
    assert optpo.sequential_vote(["5"] * 10, 0.95, min_samples=6).n_used == 6
    r = optpo.sequential_vote(["5"] * 10, 0.95, max_samples=3)
    assert not r.stopped and r.n_used == 3
    with pytest.raises(ValueError):
        optpo.sequential_vote(["5"], threshold=0.4)


def test_pseudo_rewards():
    assert optpo.pseudo_rewards(["1/2", "0.5", "2", None], "1/2").tolist() == [1.0, 1.0, 0.0, 0.0]
    assert optpo.pseudo_rewards(["1"], None).tolist() == [0.0]


def test_majority_and_replay_on_hand_matrix():
    assert optpo.majority_label([3, 1, 1, 3, -1]) == 3  # tie -> first seen
    assert optpo.majority_label([-1, -1]) == -1
    labels = np.array([[0] * 8, [0, 1, 0, 1, 1, 1, 1, 1]])
    correct = np.array([[True] * 8, [False, True, False, True, True, True, True, True]])
    orders = replay_orders(2, 8, 1, seed=0)  # order 0 = identity
    out = optpo.replay_sequential_vote(labels, correct, orders, threshold=0.95)
    assert out["n_used"].tolist() == [[4, 8]]
    assert out["sprt_correct"].tolist() == [[True, True]]
    assert out["fixed_correct"].tolist() == [[True, True]]
    out = optpo.replay_sequential_vote(labels, correct, orders, threshold=0.95, budget=3)
    assert out["n_used"].tolist() == [[3, 3]]
    assert out["fixed_correct"].tolist() == [[True, False]]


class UnboxedSampler:
    """Every sample ends in "2 + 3 = 5" without stating it as the answer; finish_reason fixed
    ("length": cut off at the token cap). Also stands in for HFSampler(config, model=, tokenizer=)."""

    def __init__(self, finish_reason, model=None, tokenizer=None):
        self.finish_reason = finish_reason

    def generate(self, requests):
        from optscale.sampling import Completion

        return [[Completion(text="We add: 2 + 3 = 5", n_tokens=8, finish_reason=self.finish_reason, seed=r.seed + i)
                 for i in range(r.n)] for r in requests]


def test_truncated_rollouts_state_no_answer(monkeypatch):
    from optscale.config import load_config
    from optscale.data.benchmarks import Problem
    from optscale.sampling import hf_cpu

    probs = [Problem("ds", "q0", "What is 2 + 3?", "5", 0)]
    cfg = load_config("smoke").sampling
    for finish, answer in (("length", None), ("stop", "5")):
        rollouts, summary = optpo.collect_rollouts(UnboxedSampler(finish), probs, "{question}", threshold=0.9,
                                                   max_samples=4, max_new_tokens=8, seed=0)
        assert rollouts and [r.answer for r in rollouts] == [answer] * len(rollouts), finish
        assert [r.correct for r in rollouts] == [answer is not None] * len(rollouts), finish
        assert summary[0]["consensus"] == answer and summary[0]["consensus_correct"] == (answer is not None)
        # the greedy evaluation grades the same way (its HFSampler replaced by the scripted one)
        monkeypatch.setattr(hf_cpu, "HFSampler", lambda c, model, tokenizer, f=finish: UnboxedSampler(f))
        rows = optpo.evaluate_greedy(None, None, cfg, probs, "{question}", max_new_tokens=8)
        assert [(r["answer"], r["correct"], r["finish_reason"]) for r in rows] == [(answer, answer is not None, finish)]


# -- the update, on a tiny random Qwen2 with a character tokenizer (no model files needed) -----
class CharTokenizer:
    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
        return "<" + msgs[0]["content"] + ">"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 96 for c in text]}


def _tiny_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _logp(model, tok, prompt, text):
    import torch

    p = tok(tok.apply_chat_template([{"role": "user", "content": prompt}]))["input_ids"]
    c = tok(text)["input_ids"]
    with torch.no_grad():
        lg = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()
    return float(torch.log_softmax(lg, -1).gather(1, torch.tensor(c)[:, None]).mean())


@pytest.mark.parametrize("method", ["lora", "bias"])
def test_update_raises_likelihood_of_consensus_rollouts(method):
    if method == "lora":
        pytest.importorskip("peft")
    import torch

    model, tok = _tiny_model(), CharTokenizer()
    ro = [optpo.Rollout("q", "2+2", "four is 4", "4", 1.0, True, 9),
          optpo.Rollout("q", "2+2", "five is 5", "5", 0.0, False, 9)]
    before = [_logp(model, tok, "2+2", r.text) for r in ro]
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    new, log = optpo.test_time_update(model, tok, ro, steps=8, lr=1e-2, method=method, baseline="group-mean")
    after = [_logp(new, tok, "2+2", r.text) for r in ro]
    assert log["trained_on"] == 2 and len(log["loss"]) == 8
    # the group-mean objective widens the margin of the consensus rollout over the other one
    assert after[0] - after[1] > before[0] - before[1] + 0.05
    # the input model is untouched
    assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items())


def test_update_skips_when_no_signal():
    model, tok = _tiny_model(), CharTokenizer()
    ro = [optpo.Rollout("q", "p", "a", "1", 1.0, True, 1)] * 3
    _, log = optpo.test_time_update(model, tok, ro, steps=1, method="bias", baseline="group-mean")
    assert log["trained_on"] == 0 and log["loss"] == []


def test_vectorised_replay_matches_the_sequential_loop():
    rng = np.random.default_rng(4)
    q, n = 12, 10
    labels = np.empty((q, n), dtype=int)
    correct = np.zeros((q, n), dtype=bool)
    for i in range(q):
        raw = rng.choice([-1, 0, 1, 2], size=n, p=[0.1, 0.5, 0.3, 0.1])
        first = {}
        labels[i] = [-1 if r < 0 else first.setdefault(r, k) for k, r in enumerate(raw)]
        correct[i] = raw == 0
    orders = replay_orders(q, n, 6, seed=1)
    for th, against in ((0.8, "runner-up"), (0.95, "runner-up"), (0.8, "rest")):
        out = optpo.replay_sequential_vote(labels, correct, orders, th, budget=8, against=against)
        for o in range(6):
            for i in range(q):
                lab = labels[i, orders[o, i, :8]].tolist()
                v = optpo.sequential_vote([None] * 8, th, labels=lab, against=against)
                assert out["n_used"][o, i] == v.n_used
                assert out["sprt_correct"][o, i] == (v.consensus_label >= 0 and correct[i, v.consensus_label])
                maj = optpo.majority_label(lab)
                assert out["fixed_correct"][o, i] == (maj >= 0 and correct[i, maj])


def test_systems_config_validation():
    from optscale.config import ConfigError, load_config

    assert load_config("smoke").systems.optpo_threshold == 0.95
    with pytest.raises(ConfigError, match="optpo_threshold"):
        load_config("smoke", "systems.optpo_threshold=0.3")
    with pytest.raises(ConfigError, match="pf_resampler"):
        load_config("smoke", "systems.pf_resampler=stratified")
