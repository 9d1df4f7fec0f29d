"""OptPO: majority voting with a Bayesian sequential stop, and test-time policy updates from
the retained rollouts.

Sequential vote (pure functions, importable by ``optscale.policies``). Rollouts of one
question arrive one at a time; their final answers are grouped into equivalence classes
(:func:`optscale.data.grading.answer_classes`). After each rollout let ``n_1 >= n_2`` be the vote
counts of the leading and the runner-up class (``n_2 = 0`` while only one answer was seen).
With a symmetric ``Beta(prior, prior)`` prior on the leader's share ``theta`` of the two-way
contest, the posterior is ``Beta(prior + n_1, prior + n_2)`` and

    P(leader is the consensus | votes) = P(theta > 1/2) = 1 - I_{1/2}(prior + n_1, prior + n_2)

(``I`` the regularised incomplete beta function). Sampling stops at the first rollout where
this posterior reaches ``threshold``; that is the Bayesian SPRT with posterior odds
``threshold / (1 - threshold)`` as the boundary. With ``prior = 1`` and unanimous votes the
posterior after ``k`` votes is ``1 - 2^{-(k+1)}``, so a 0.95 threshold stops at the 4th rollout.

Pseudo-labels: every retained rollout gets reward 1 if its answer is equivalent to the
consensus, else 0. :func:`test_time_update` takes a few gradient steps of reward-weighted
log-likelihood (REINFORCE with baseline 0, or GRPO-style group-mean baseline) on those
rollouts, with LoRA adapters from ``peft`` when installed and a bias-only update otherwise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import special

from ..data.grading import answer_classes, is_equivalent

__all__ = [
    "consensus_posterior",
    "SequentialVote",
    "sequential_vote",
    "sprt_stop_index",
    "pseudo_rewards",
    "Rollout",
    "collect_rollouts",
    "test_time_update",
    "evaluate_greedy",
    "pool_class_labels",
    "majority_label",
    "replay_sequential_vote",
]


def consensus_posterior(n_lead: int | np.ndarray, n_second: int | np.ndarray, prior: float = 1.0):
    """Posterior probability that the leading answer is the consensus, ``P(theta > 1/2)`` under
    ``Beta(prior + n_lead, prior + n_second)``; ``n_second`` is the runner-up's votes, or all
    other rollouts for the stricter ``against="rest"`` form. Broadcasts over arrays."""
    if prior <= 0:
        raise ValueError("prior must be > 0")
    n1, n2 = np.asarray(n_lead, dtype=float), np.asarray(n_second, dtype=float)
    if np.any(n1 < 0) or np.any(n2 < 0):
        raise ValueError("vote counts must be >= 0")
    out = special.betainc(prior + n2, prior + n1, 0.5)  # = 1 - I_{1/2}(prior+n1, prior+n2)
    return float(out) if out.ndim == 0 else out


@dataclass
class SequentialVote:
    """Outcome of :func:`sequential_vote` on one stream of answers."""

    n_used: int  # rollouts consumed (the stop index + 1, or the whole stream)
    stopped: bool  # True when the posterior passed the threshold before the stream ran out
    consensus: str | None  # representative answer of the leading class (None: no answer at all)
    consensus_label: int  # class label (index of its first member), -1 when no answer
    posterior: list[float] = field(default_factory=list)  # after each consumed rollout


def sequential_vote(answers: Sequence[str | None], threshold: float, prior: float = 1.0,
                    min_samples: int = 1, max_samples: int | None = None,
                    labels: Sequence[int] | None = None, against: str = "runner-up") -> SequentialVote:
    """Consume ``answers`` in order and stop once ``consensus_posterior >= threshold``.

    ``answers`` are final answers (None = no answer; it is consumed but casts no vote).
    ``labels`` may pass precomputed equivalence classes (e.g. from a pool) to skip math-verify.
    Ties for the lead go to the class seen first. ``against``: ``runner-up`` (the leader vs the
    second class, default) or ``rest`` (the leader vs every other rollout, abstentions included:
    a stricter "majority of all rollouts" consensus, the form ``optscale.policies`` uses)."""
    if against not in ("runner-up", "rest"):
        raise ValueError(f"against must be 'runner-up' or 'rest', got {against!r}")
    if not 0.5 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0.5, 1), got {threshold}")
    lab = list(labels) if labels is not None else answer_classes(list(answers))
    if len(lab) != len(answers):
        raise ValueError("labels and answers differ in length")
    limit = len(lab) if max_samples is None else min(max_samples, len(lab))
    counts: dict[int, int] = {}
    first_seen: dict[int, int] = {}
    post: list[float] = []
    leader = -1
    for i in range(limit):
        if lab[i] >= 0:
            counts[lab[i]] = counts.get(lab[i], 0) + 1
            first_seen.setdefault(lab[i], i)
        if counts:
            # highest count, ties to the class seen first in the stream
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))
            leader = ordered[0][0]
            n1 = ordered[0][1]
            n2 = (ordered[1][1] if len(ordered) > 1 else 0) if against == "runner-up" else i + 1 - n1
            post.append(consensus_posterior(n1, n2, prior))
        else:
            post.append(0.5)
        if i + 1 >= min_samples and counts and post[-1] >= threshold:
            return SequentialVote(i + 1, True, answers[first_seen[leader]], leader, post)
    return SequentialVote(limit, False, answers[first_seen[leader]] if leader >= 0 else None, leader, post)


def sprt_stop_index(answers: Sequence[str | None], threshold: float, prior: float = 1.0,
                    labels: Sequence[int] | None = None) -> int | None:
    """0-based index of the rollout at which the sequential vote stops, None if it never does."""
    r = sequential_vote(answers, threshold, prior, labels=labels)
    return r.n_used - 1 if r.stopped else None


def pseudo_rewards(answers: Sequence[str | None], consensus: str | None) -> np.ndarray:
    """(n,) float rewards: 1.0 where the answer is equivalent to the consensus, else 0.0."""
    if consensus is None:
        return np.zeros(len(answers))
    return np.array([1.0 if a is not None and is_equivalent(consensus, a) else 0.0 for a in answers])


# ---------------------------------------------------------------------------------------------
# Rollouts and the test-time update (torch / transformers; imported lazily)
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    question_id: str
    prompt: str  # the user message
    text: str
    answer: str | None
    reward: float  # pseudo-label: agrees with the consensus
    correct: bool  # against the gold answer (for evaluation only; never used for training)
    n_tokens: int


def collect_rollouts(sampler: Any, problems: Sequence[Any], template: str, threshold: float, max_samples: int,
                     max_new_tokens: int, seed: int, prior: float = 1.0, chunk: int = 2) -> tuple[list[Rollout], list[dict]]:
    """Sample each problem's rollouts ``chunk`` at a time until the sequential vote stops or
    ``max_samples`` are drawn. Returns (retained rollouts with pseudo-rewards, one summary dict
    per problem: ``question_id, n_used, stopped, consensus, consensus_correct, tokens``).

    Rollouts beyond the stop inside the last chunk are discarded and not counted as used
    (with ``chunk=1`` there are none); their tokens are reported as ``tokens_drawn``."""
    from ..data.grading import grade
    from ..sampling.base import SampleRequest, derive_seed

    rollouts: list[Rollout] = []
    summary: list[dict] = []
    for p in problems:
        prompt = template.replace("{question}", p.question).strip()
        comps, graded = [], []
        vote = None
        k = 0
        while len(comps) < max_samples:
            m = min(chunk, max_samples - len(comps))
            new = sampler.generate([SampleRequest(prompt=prompt, n=m, max_new_tokens=max_new_tokens,
                                                  seed=derive_seed(seed, "optpo", p.dataset, p.id, k),
                                                  key=f"{p.dataset}/{p.id}/optpo{k}")])[0]
            k += 1
            comps.extend(new)
            graded.extend(grade(p.answer, c.text, c.finish_reason) for c in new)  # truncated: stated answers only
            vote = sequential_vote([g[0] for g in graded], threshold, prior, max_samples=max_samples)
            if vote.stopped:
                break
        assert vote is not None
        kept = comps[: vote.n_used]
        answers = [g[0] for g in graded[: vote.n_used]]
        rewards = pseudo_rewards(answers, vote.consensus)
        for c, (ans, ok), r in zip(kept, graded, rewards):
            rollouts.append(Rollout(p.id, prompt, c.text, ans, float(r), bool(ok), int(c.n_tokens)))
        summary.append({
            "question_id": p.id, "n_used": vote.n_used, "stopped": vote.stopped, "consensus": vote.consensus,
            "consensus_correct": bool(is_equivalent(p.answer, vote.consensus)) if vote.consensus else False,
            "tokens": int(sum(c.n_tokens for c in kept)), "tokens_drawn": int(sum(c.n_tokens for c in comps)),
            "posterior": vote.posterior[-1] if vote.posterior else float("nan"),
        })
    return rollouts, summary


def _advantages(rollouts: Sequence[Rollout], baseline: str) -> np.ndarray:
    r = np.array([x.reward for x in rollouts], dtype=float)
    if baseline == "none":
        return r
    if baseline == "group-mean":
        out = r.copy()
        qids = np.array([x.question_id for x in rollouts])
        for q in np.unique(qids):
            m = qids == q
            out[m] = r[m] - r[m].mean()
        return out
    raise ValueError(f"baseline must be 'none' or 'group-mean', got {baseline!r}")


def test_time_update(model: Any, tokenizer: Any, rollouts: Sequence[Rollout], steps: int = 2, lr: float = 1e-4,
                     method: str = "lora", baseline: str = "none", lora_rank: int = 8, seed: int = 0,
                     max_tokens: int = 256) -> tuple[Any, dict[str, Any]]:
    """A few steps of reward-weighted log-likelihood on the rollouts; returns (updated model,
    log). The input model is deep-copied first (the shared cached model stays untouched).

    Loss per step: ``-sum_i A_i * mean_t log p(y_i,t | prompt_i, y_i,<t) / sum_i |A_i|`` over
    rollouts with ``A_i != 0`` (``A`` from :func:`_advantages`: raw pseudo-reward or reward
    minus the question's mean). ``method``: ``lora`` (peft LoRA r=``lora_rank`` on the
    attention and MLP projections, merged back at the end) or ``bias`` (only bias vectors and
    the final norm are trainable; no extra dependency). Completion tokens are truncated to
    ``max_tokens``. Gradients are computed in float32 on a float32 copy when the model is
    bf16 (bf16 Adam updates of size 1e-4 round to zero)."""
    import torch

    torch.manual_seed(seed)
    adv = _advantages(rollouts, baseline)
    use = [i for i in range(len(rollouts)) if adv[i] != 0.0]
    log: dict[str, Any] = {"method": method, "baseline": baseline, "steps": steps, "lr": lr,
                           "rollouts": len(rollouts), "trained_on": len(use), "loss": []}
    m = copy.deepcopy(model).float()
    if not use:
        return m.to(model.dtype), log
    if method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            import warnings

            warnings.warn("optpo: method='lora' needs peft (a dependency of the package; pip install peft); "
                          "falling back to the bias-only update", RuntimeWarning, stacklevel=2)
            method = log["method"] = "bias"  # documented fallback, recorded in the log's "method"
    if method == "lora":
        cfg = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        m = get_peft_model(m, cfg)
    elif method == "bias":
        for n_, p_ in m.named_parameters():
            p_.requires_grad_(n_.endswith(".bias") or n_.startswith("model.norm"))
    else:
        raise ValueError(f"method must be 'lora' or 'bias', got {method!r}")
    params = [p_ for p_ in m.parameters() if p_.requires_grad]
    log["trainable_params"] = int(sum(p_.numel() for p_ in params))
    opt = torch.optim.Adam(params, lr=lr)
    batch = []
    for i in use:
        r = rollouts[i]
        pre = tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                            add_generation_prompt=True)
        p_ids = tokenizer(pre, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(r.text, add_special_tokens=False)["input_ids"][:max_tokens]
        if c_ids:
            batch.append((p_ids, c_ids, float(adv[i])))
    norm = sum(abs(a) for *_, a in batch)
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        total = 0.0
        for p_ids, c_ids, a in batch:
            ids = torch.tensor([p_ids + c_ids])
            logits = m(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(c_ids)[:, None]).mean()
            loss = -a * lp / norm
            loss.backward()  # accumulate per rollout: peak memory of one sequence
            total += float(loss.detach())
        opt.step()
        log["loss"].append(total)
    m.eval()
    if method == "lora":
        m = m.merge_and_unload()
    return m.to(model.dtype), log


def evaluate_greedy(model: Any, tokenizer: Any, sampling_config: Any, problems: Sequence[Any], template: str,
                    max_new_tokens: int) -> list[dict]:
    """Greedy (temperature 0) answer per problem with the given model; rows of
    ``question_id, answer, correct, n_tokens, finish_reason`` (a truncated answer is graded as one)."""
    import dataclasses

    from ..data.grading import grade
    from ..sampling.base import SampleRequest
    from ..sampling.hf_cpu import HFSampler

    cfg = dataclasses.replace(sampling_config, temperature=0.0)
    s = HFSampler(cfg, model=model, tokenizer=tokenizer)
    rows = []
    for p in problems:
        c = s.generate([SampleRequest(prompt=template.replace("{question}", p.question).strip(), n=1,
                                      max_new_tokens=max_new_tokens, seed=0)])[0][0]
        ans, ok = grade(p.answer, c.text, c.finish_reason)
        rows.append({"question_id": p.id, "answer": ans, "correct": bool(ok), "n_tokens": int(c.n_tokens),
                     "finish_reason": c.finish_reason})
    return rows


# ---------------------------------------------------------------------------------------------
# Replay on a pool: sequential vote vs fixed-budget majority on the same sample streams
# ---------------------------------------------------------------------------------------------
def pool_class_labels(answers: np.ndarray) -> np.ndarray:
    """(questions, n) int equivalence-class labels per question row (-1 = no answer)."""
    return np.array([answer_classes([None if (a is None or (isinstance(a, float) and math.isnan(a))) else str(a)
                                     for a in row]) for row in answers], dtype=int)


def majority_label(labels: Sequence[int]) -> int:
    """Most frequent class label (ignoring -1), ties to the class seen first; -1 if none."""
    counts: dict[int, int] = {}
    for l in labels:
        if l >= 0:
            counts[int(l)] = counts.get(int(l), 0) + 1
    if not counts:
        return -1
    best = max(counts.values())
    return next(int(l) for l in labels if l >= 0 and counts[int(l)] == best)


def _class_tallies(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For streams of class labels (..., m) with values in [-1, n_classes): running vote counts
    (..., m, n_classes) and each class's first position in the stream (..., n_classes; m if absent)."""
    m = labels.shape[-1]
    n_classes = max(int(labels.max()) + 1, 1)
    onehot = labels[..., None] == np.arange(n_classes)
    counts = np.cumsum(onehot, axis=-2)
    first = np.where(onehot.any(-2), onehot.argmax(-2), m)
    return counts, first


def replay_sequential_vote(labels: np.ndarray, correct: np.ndarray, orders: np.ndarray, threshold: float,
                           prior: float = 1.0, budget: int | None = None,
                           against: str = "runner-up") -> dict[str, np.ndarray]:
    """Replay the sequential vote and fixed-budget majority voting on pool sample streams
    (vectorised; same decisions as :func:`sequential_vote` / :func:`majority_label`).

    ``labels``, ``correct``: (questions, n) from :func:`pool_class_labels` and ``Pool.correct()``
    (a class label is the index of its first member, so ``correct[i, label]`` is the class's
    correctness); ``orders``: (orders, questions, n) from :func:`optscale.data.pools.replay_orders`;
    ``budget`` caps the stream (default n). Returns (orders, questions) arrays ``n_used``,
    ``sprt_correct`` (the stopped vote's class is correct) and ``fixed_correct`` (majority over
    all ``budget`` samples, ties to the class seen first in the stream)."""
    if not 0.5 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0.5, 1), got {threshold}")
    q, n = labels.shape
    budget = n if budget is None else budget
    if budget > n:
        raise ValueError(f"budget={budget} exceeds the pool's {n} samples")
    lab = np.take_along_axis(np.broadcast_to(labels, orders.shape), orders, -1)[..., :budget]  # (O, Q, B)
    counts, first = _class_tallies(lab)  # (O, Q, B, C), (O, Q, C)
    top2 = -np.sort(-counts, axis=-1)[..., :2] if counts.shape[-1] > 1 else np.concatenate(
        [counts, np.zeros_like(counts)], -1)
    if against == "rest":
        top2 = top2.copy()
        top2[..., 1] = np.arange(1, budget + 1) - top2[..., 0]
    elif against != "runner-up":
        raise ValueError(f"against must be 'runner-up' or 'rest', got {against!r}")
    post = consensus_posterior(top2[..., 0], top2[..., 1], prior)
    post = np.where(top2[..., 0] > 0, post, 0.0)
    hit = post >= threshold  # (O, Q, B)
    stop = np.where(hit.any(-1), hit.argmax(-1), budget - 1)
    n_used = stop + 1
    # leader at the stop (and at the end): most votes, ties to the class seen first
    tie = first / (budget + 1.0)  # < 1, so it only breaks ties between equal counts

    def leader(c: np.ndarray) -> np.ndarray:
        key = np.where(c > 0, c - tie, -np.inf)
        return np.where(np.isfinite(key).any(-1), key.argmax(-1), -1)

    at_stop = np.take_along_axis(counts, stop[..., None, None], -2)[..., 0, :]
    lead_stop, lead_end = leader(at_stop), leader(counts[..., -1, :])
    corr = np.broadcast_to(correct.astype(bool), (orders.shape[0], q, n))

    def ok(lead: np.ndarray) -> np.ndarray:
        return np.where(lead >= 0, np.take_along_axis(corr, np.maximum(lead, 0)[..., None], -1)[..., 0], False)

    return {"n_used": n_used, "sprt_correct": ok(lead_stop), "fixed_correct": ok(lead_end)}
