"""A learned outcome verifier: a probe on the generator's own hidden states (Cobbe et al., 2021).

Features of one (question, solution) pair come from the generator itself, run through llama.cpp
(the quantized GGUF; AVX2 is enough, no bfloat16 pass): the prompt the generator saw (chat template
and prompt template, exactly as :class:`~optscale.sampling.llama_cpp.LlamaCppSampler` formats it) is
evaluated once per question, then each sample's solution is teacher-forced after it and the hidden
state is read at every solution token. A sample's feature vector concatenates, for each probed depth
(``layers``: a number of transformer blocks; the full model, or a copy of the GGUF cut after that
many blocks, :func:`truncated_gguf`), the hidden state at the final token and the mean over the
solution's tokens (llama.cpp's output embeddings: the block's output after the model's final norm).
The tokens are embedded here and fed to a copy of the GGUF without its vocabulary (:func:`headless_gguf`),
so llama.cpp skips the output head it would otherwise compute on every token (1.4x; the same numbers).

The score of a sample depends on its question and that one sample only (OptScale assumes i.i.d.
scores given the question): the head is a logistic regression on standardised features
(:func:`fit_probe_head`) and never sees the other samples of the question it scores.

No question is scored by a head that saw it: :func:`crossfit_probe_scores` splits a pool's questions
into K folds by question id, trains each fold's head on the other folds (plus optional external
training sets: generations on questions outside every evaluation) and scores that fold. The pool
metadata of the ``probe`` score column records, per fold, ``train_question_ids`` and
``scored_question_ids`` (and the external sets by name and question ids).

Raw features are a cache outside git (:func:`feature_cache_dir`, ``$OPTSCALE_CACHE`` or
``~/.cache/optscale``), one ``.npz`` file per (pool, question), so extraction checkpoints per
question and resumes; the scores and the trained heads' coefficients are committed with the pools.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "PROBE_FEATURE_VERSION",
    "feature_cache_dir",
    "copy_gguf",
    "truncated_gguf",
    "headless_gguf",
    "token_embeddings",
    "HEADLESS_VOCAB",
    "HiddenStateExtractor",
    "prompt_token_ids",
    "pool_features",
    "QuestionFeatureExtractor",
    "ProbeHead",
    "ProbeScorer",
    "question_digest",
    "probe_head_dir",
    "score_pool_with_probe",
    "cached_pool_features",
    "cached_seconds_per_sample",
    "cached_extraction_timing",
    "probe_learning_curve",
    "fit_probe_head",
    "question_folds",
    "crossfit_probe_scores",
]

PROBE_FEATURE_VERSION = 1  # bump when the feature definition changes (invalidates the cache)


def feature_cache_dir() -> Path:
    """Where raw probe features live (never in git): ``$OPTSCALE_CACHE/probe_features`` or
    ``~/.cache/optscale/probe_features``."""
    root = Path(os.environ.get("OPTSCALE_CACHE", Path.home() / ".cache" / "optscale"))
    return root / "probe_features"


def _gguf_arch(reader: Any) -> str:
    import gguf

    field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    return str(bytes(field.parts[field.data[0]]), "utf-8")


def copy_gguf(reader: Any, dst: Path, fields: Mapping[str, Any], tensors: Sequence[tuple[Any, np.ndarray]]) -> Path:
    """Write a GGUF to ``dst`` (atomically, through a temporary file) with ``reader``'s architecture
    and endianness: its key/value fields, except the architecture and ``GGUF.*`` ones, each with the
    value ``fields[name]`` gives (a field mapped to None is dropped; one missing keeps its value),
    then the ``fields`` entries the source lacks (as (value, GGUFValueType)), and ``tensors``
    (``(source tensor, data)``: the source's name and type, the given data, still quantized)."""
    import gguf

    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=_gguf_arch(reader), endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name in fields and fields[field.name] is None:
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = fields[field.name][0] if field.name in fields else field.contents()
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    for name, spec in fields.items():
        if spec is not None and name not in reader.fields:
            writer.add_key_value(name, spec[0], spec[1])
    for t, data in tensors:
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data in tensors:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(tmp, dst)
    return dst


def truncated_gguf(src: str | os.PathLike, n_layers: int, out_dir: str | os.PathLike | None = None) -> Path:
    """A copy of GGUF ``src`` keeping its first ``n_layers`` transformer blocks (and the embeddings,
    the final norm and the output head), so that llama.cpp's output embeddings are the hidden state
    after block ``n_layers`` (through the final norm). Written once with the ``gguf`` package's
    reader / writer (tensors copied unchanged, still quantized) and reused."""
    import gguf

    src = Path(src)
    reader = gguf.GGUFReader(str(src))
    block_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=_gguf_arch(reader))
    n_blocks = int(reader.fields[block_key].contents())
    if not 1 <= n_layers <= n_blocks:
        raise ValueError(f"{src}: n_layers={n_layers} outside 1..{n_blocks} blocks")
    if n_layers == n_blocks:
        return src
    out_dir = Path(out_dir) if out_dir is not None else feature_cache_dir().parent / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{src.stem}.first{n_layers}of{n_blocks}.gguf"
    if dst.is_file():
        return dst

    def keep(name: str) -> bool:
        if not name.startswith("blk."):
            return True
        return int(name.split(".")[1]) < n_layers

    return copy_gguf(reader, dst, {block_key: (n_layers, None)},
                     [(t, t.data) for t in reader.tensors if keep(t.name)])


HEADLESS_VOCAB = 8  # rows of the embedding and output matrices a headless GGUF keeps


def headless_gguf(src: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """A copy of GGUF ``src`` without its vocabulary: ``tokenizer.ggml.model = "none"``, a vocabulary
    of :data:`HEADLESS_VOCAB` entries, and the token-embedding and output matrices cut to that many rows
    (still quantized). llama.cpp then computes the output head for 8 entries instead of the whole
    vocabulary — in embedding mode it runs the head on every token, ~30% of the work here — so the
    hidden states are fed as input embeddings (:func:`token_embeddings` of ``src``) and read out
    exactly as before: the same numbers (tested), ~1.4x the tokens per second. Written once beside
    ``src``'s cut copies and reused."""
    import gguf

    src = Path(src)
    out_dir = Path(out_dir) if out_dir is not None else feature_cache_dir().parent / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{src.stem}.headless.gguf"
    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(str(src))
    vocab_key = gguf.Keys.LLM.VOCAB_SIZE.format(arch=_gguf_arch(reader))
    fields: dict[str, Any] = {name: None for name in reader.fields if name.startswith("tokenizer.")}
    fields[gguf.Keys.Tokenizer.MODEL] = ("none", gguf.GGUFValueType.STRING)
    fields[vocab_key] = (HEADLESS_VOCAB, gguf.GGUFValueType.UINT32)
    tensors = [(t, np.ascontiguousarray(t.data[:HEADLESS_VOCAB]) if t.name in ("token_embd.weight", "output.weight")
                else t.data) for t in reader.tensors]
    return copy_gguf(reader, dst, fields, tensors)


def token_embeddings(src: str | os.PathLike) -> np.ndarray:
    """(n_vocab, n_embd) float32: GGUF ``src``'s token-embedding matrix, dequantized by the ``gguf``
    package (what llama.cpp's row lookup computes from the same blocks)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if t is None:
        raise ValueError(f"{src}: no token_embd.weight tensor")
    return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


class HiddenStateExtractor:
    """llama.cpp in embedding mode (no pooling) over one GGUF: :meth:`features` evaluates a prompt once
    and teacher-forces each solution after it, returning per solution the hidden state at its last
    token and its mean over the solution's tokens."""

    def __init__(self, gguf_path: str | os.PathLike, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, input_embeddings: bool = True):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        set_verbose(False)
        llama_cpp.llama_backend_init()
        self._L = llama_cpp
        self.gguf = Path(gguf_path)
        self.n_threads = n_threads or int(os.environ.get("OPTSCALE_TORCH_THREADS", os.cpu_count() or 1))
        # input_embeddings: tokens are embedded here and run through the headless copy of the GGUF
        # (headless_gguf), tokenized by a vocabulary-only load of the GGUF itself; else llama.cpp
        # embeds the tokens and computes the whole output head on every token
        self.input_embeddings = input_embeddings
        self.embeddings = token_embeddings(self.gguf) if input_embeddings else None
        vp = llama_cpp.llama_model_default_params()
        vp.vocab_only = True
        self.vocab = (_internals.LlamaModel(path_model=str(self.gguf), params=vp, verbose=False)
                      if input_embeddings else None)
        model_path = headless_gguf(self.gguf) if input_embeddings else self.gguf
        self.lm = _internals.LlamaModel(path_model=str(model_path), params=llama_cpp.llama_model_default_params(),
                                        verbose=False)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 2
        cp.kv_unified = True
        cp.embeddings = True
        cp.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.lm, params=cp, verbose=False)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.lm.model))
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=self.n_embd if input_embeddings else 0,
                                           n_seq_max=1, verbose=False)

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return (self.vocab or self.lm).tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _decode(self, tokens: Sequence[int], pos0: int, seq: int, outputs: bool) -> np.ndarray | None:
        """Decode ``tokens`` at positions pos0.. on sequence ``seq``; with ``outputs`` return their
        embeddings (len(tokens) x n_embd)."""
        L = self._L
        rows = []
        for lo in range(0, len(tokens), self.n_batch):
            chunk = tokens[lo:lo + self.n_batch]
            b = self.batch.batch
            b.n_tokens = len(chunk)
            if self.embeddings is not None:
                x = np.ascontiguousarray(self.embeddings[np.asarray(chunk, dtype=np.int64)])
                ctypes.memmove(b.embd, x.ctypes.data, x.nbytes)
            for k, t in enumerate(chunk):
                if self.embeddings is None:
                    b.token[k] = t
                b.pos[k] = pos0 + lo + k
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = seq
                b.logits[k] = outputs
            rc = L.llama_decode(self.ctx.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} on {self.gguf.name} (1: no KV slot; <0: error)")
            if outputs:
                ptr = L.llama_get_embeddings(self.ctx.ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_embd)).copy())
        return np.concatenate(rows) if outputs else None

    def features(self, prompt: Sequence[int], solutions: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(solutions), 2 * n_embd) float32: [hidden state at the last solution token, mean over
        the solution's tokens] for each solution, after ``prompt``."""
        L = self._L
        mem = L.llama_get_memory(self.ctx.ctx)
        L.llama_memory_clear(mem, True)
        need = len(prompt) + max((len(s) for s in solutions), default=0)
        if need > self.n_ctx:
            raise RuntimeError(f"a prompt and solution need {need} KV cells but n_ctx is {self.n_ctx}")
        self._decode(prompt, 0, 0, outputs=False)
        out = np.zeros((len(solutions), 2 * self.n_embd), dtype=np.float32)
        for i, sol in enumerate(solutions):
            if not sol:
                continue
            L.llama_memory_seq_cp(mem, 0, 1, -1, -1)
            h = self._decode(list(sol), len(prompt), 1, outputs=True)
            L.llama_memory_seq_rm(mem, 1, -1, -1)
            out[i, :self.n_embd] = h[-1]
            out[i, self.n_embd:] = h.mean(axis=0)
        return out

    def close(self) -> None:
        self.embeddings = None
        for obj in ("batch", "ctx", "lm", "vocab"):
            o = getattr(self, obj, None)
            if o is not None:
                o.close()
                setattr(self, obj, None)


def prompt_token_ids(extractor: HiddenStateExtractor, sampling_config: Any, question: str, tokenizer: Any) -> list[int]:
    """The generator's prompt for ``question`` as token ids, formatted exactly as pool generation
    does (prompt template, then the chat template with the generation prompt)."""
    from ..sampling.base import chat_messages, load_prompt_template

    template = load_prompt_template(sampling_config.prompt_template)
    prompt = template.replace("{question}", question).strip()
    text = tokenizer.apply_chat_template(chat_messages(sampling_config, prompt), tokenize=False,
                                         add_generation_prompt=True)
    return extractor.tokenize(text, special=True)


def _cache_key(pool_name: str, dataset: str, layers: Sequence[int]) -> Path:
    tag = f"v{PROBE_FEATURE_VERSION}_layers{'-'.join(map(str, layers))}"
    return feature_cache_dir() / pool_name / dataset / tag


def pool_features(df: "Any", questions: Mapping[str, str], sampling_config: Any, pool_name: str, dataset: str,
                  layers: Sequence[int] | None = None, n_threads: int | None = None, hours: float | None = None,
                  question_ids: Iterable[str] | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Features of every sample of the pool frame ``df`` (rows of one dataset), question by question,
    cached per question under :func:`feature_cache_dir` (so an interrupted run resumes). ``questions``
    maps question id -> question text. ``layers``: block counts to probe (default: the full model).
    One process with ``n_threads`` threads (default: every core): on the 2-vCPU AMD EPYC, two 1-thread
    processes extracted ~45-54 tokens per second together (a niced benchmark ran beside them) against
    60-65 for one 2-thread process alone, though one 1-thread process alone ran at 40.
    Returns {question_id: (n_samples, n_features)} in ``sample_index`` order, for the questions done
    (all of them unless ``hours`` ran out)."""
    from ..sampling.llama_cpp import resolve_gguf

    full = resolve_gguf(sampling_config.model)
    n_blocks = _block_count(full)
    layers = list(layers or [n_blocks])
    cache = _cache_key(pool_name, dataset, layers)
    cache.mkdir(parents=True, exist_ok=True)
    wanted = list(question_ids) if question_ids is not None else list(dict.fromkeys(df["question_id"]))
    out: dict[str, np.ndarray] = {}
    todo = []
    for qid in wanted:
        f = cache / f"{_safe(qid)}.npz"
        if f.is_file():
            out[qid] = np.load(f)["features"]
        else:
            todo.append(qid)
    if not todo:
        return out
    deadline = time.time() + 3600 * hours if hours else None
    ggufs = [str(truncated_gguf(full, L)) for L in layers]
    jobs = ((qid, questions[qid], df[df["question_id"] == qid].sort_values("sample_index")) for qid in todo)
    jobs = ((qid, q, rows["text"].tolist(), rows["sample_index"].to_numpy()) for qid, q, rows in jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"probe features {dataset}", unit="question")
    extractor = QuestionFeatureExtractor(ggufs, sampling_config, n_threads)
    try:
        for qid, question, texts, index in jobs:
            if deadline is not None and time.time() >= deadline:
                break
            out[qid] = extractor.extract(question, texts, index, cache / f"{_safe(qid)}.npz")
            if bar is not None:
                bar.update()
    finally:
        extractor.close()
        if bar is not None:
            bar.close()
    return out


class QuestionFeatureExtractor:
    """One extractor per probed depth (GGUF paths ``ggufs``) and the generator's chat tokenizer:
    :meth:`extract` computes one question's features and writes its cache file atomically."""

    def __init__(self, ggufs: Sequence[str], sampling_config: Any, n_threads: int | None = None):
        from ..sampling.convert import load_chat_tokenizer

        self.sampling_config = sampling_config
        self.tokenizer = load_chat_tokenizer(sampling_config.model)
        self.extractors = [HiddenStateExtractor(g, n_threads=n_threads) for g in ggufs]
        self.n_threads = self.extractors[0].n_threads  # (None: HiddenStateExtractor's default)

    def extract(self, question: str, texts: Sequence[str], sample_index: np.ndarray, cache_file: Path) -> np.ndarray:
        t0 = time.time()
        parts, n_tokens = [], 0
        for ex in self.extractors:
            prompt = prompt_token_ids(ex, self.sampling_config, question, self.tokenizer)
            sols = [ex.tokenize(t) for t in texts]
            n_tokens = int(sum(len(s) for s in sols))
            parts.append(ex.features(prompt, sols))
        feats = np.concatenate(parts, axis=1)
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, features=feats, sample_index=np.asarray(sample_index), seconds=time.time() - t0,
                 n_tokens=n_tokens, n_threads=self.n_threads)
        os.replace(tmp, cache_file)
        return feats

    def close(self) -> None:
        for ex in self.extractors:
            ex.close()


def _safe(qid: str) -> str:
    return hashlib.sha1(str(qid).encode()).hexdigest()[:16] + "_" + "".join(c if c.isalnum() else "_" for c in str(qid))[:40]


def _block_count(path: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch_field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    arch = str(bytes(arch_field.parts[arch_field.data[0]]), "utf-8")
    return int(reader.fields[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)].contents())


@dataclass
class ProbeHead:
    """A trained probe head: standardisation then logistic regression, stored as plain arrays (no
    pickle), so a committed head loads anywhere."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    meta: dict

    def score(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                            coef=self.coef.astype(np.float32), intercept=np.float64(self.intercept),
                            meta=json.dumps(self.meta, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProbeHead":
        z = np.load(path, allow_pickle=False)
        return cls(mean=z["mean"].astype(np.float64), scale=z["scale"].astype(np.float64),
                   coef=z["coef"].astype(np.float64), intercept=float(z["intercept"]), meta=json.loads(str(z["meta"])))


def fit_probe_head(X: np.ndarray, y: np.ndarray, C: float = 0.01, meta: dict | None = None, seed: int = 0) -> ProbeHead:
    """Standardise, then an L2 logistic regression (scikit-learn, lbfgs) on correctness labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError("probe head: the training samples are all correct or all wrong")
    sc = StandardScaler().fit(X)
    scale = np.where(sc.scale_ > 0, sc.scale_, 1.0)
    lr = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit((X - sc.mean_) / scale, y)
    return ProbeHead(mean=sc.mean_, scale=scale, coef=lr.coef_[0], intercept=float(lr.intercept_[0]),
                     meta={"C": C, "n_train": int(len(y)), "train_accuracy_rate": float(y.mean()), **(meta or {})})


def question_folds(question_ids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """K folds of question ids by a stable hash of (seed, id): a question's fold does not move when
    the pool grows."""
    ids = list(dict.fromkeys(question_ids))
    if k < 2 or k > len(ids):
        raise ValueError(f"question_folds: k={k} for {len(ids)} questions")
    keyed = sorted(ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    return [keyed[f::k] for f in range(k)]


def crossfit_probe_scores(features: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray], k: int = 5,
                          C: float = 0.01, seed: int = 0,
                          external: Sequence[tuple[str, Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] = (),
                          ) -> tuple[dict[str, np.ndarray], list[dict], list[ProbeHead]]:
    """Score every question of a pool with a head that never saw it.

    ``features`` / ``correct``: {question_id: (n_samples, d)} / {question_id: (n_samples,)} of the pool;
    ``external``: (name, features, correct) training sets of questions outside the pool, added to
    every fold's training data. Returns (scores {question_id: (n_samples,)}, per-fold metadata with
    ``train_question_ids`` / ``scored_question_ids`` / ``external``, the fold heads)."""
    qids = [q for q in features if q in correct]
    folds = question_folds(qids, k, seed)
    ext_X = [np.concatenate([f[q] for q in f]) for _, f, _ in external if f]
    ext_y = [np.concatenate([c[q] for q in f]) for _, f, c in external if f]
    scores: dict[str, np.ndarray] = {}
    meta: list[dict] = []
    heads: list[ProbeHead] = []
    for i, fold in enumerate(folds):
        held = set(fold)
        train = [q for q in qids if q not in held]
        X = np.concatenate([features[q] for q in train] + ext_X)
        y = np.concatenate([np.asarray(correct[q], dtype=int) for q in train] + ext_y)
        fm = {"fold": i, "train_question_ids": train, "scored_question_ids": list(fold),
              "external": {name: sorted(f) for name, f, _ in external}}
        head = fit_probe_head(X, y, C=C, seed=seed, meta={"fold": i, "n_pool_train_questions": len(train)})
        for q in fold:
            scores[q] = head.score(features[q])
        meta.append(fm)
        heads.append(head)
    return scores, meta, heads


def question_digest(question: str) -> str:
    """A short stable digest of a question's text: how a head's metadata names the questions it saw,
    so a head refuses to score any of them (whatever id another pool gives them)."""
    return hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:16]


def probe_head_dir(pool_name: str, dataset: str) -> Path:
    """Where a pool's trained probe heads are committed: ``data/probe/<pool_name>/<dataset>/``."""
    from ..config import PROJECT_ROOT

    return Path(PROJECT_ROOT) / "data" / "probe" / pool_name / dataset


@dataclass(frozen=True)
class ProbeTrainingSet:
    """Labelled features of another pool's questions (outside the pool being scored), added to every
    fold's training data: ``features`` / ``correct`` by question id, ``questions`` their texts."""

    name: str
    features: Mapping[str, np.ndarray]
    correct: Mapping[str, np.ndarray]
    questions: Mapping[str, str]


def external_training_set(path: str | os.PathLike, questions: Mapping[str, str],
                          layers: Sequence[int] | None = None) -> ProbeTrainingSet:
    """The committed pool at ``path`` as a :class:`ProbeTrainingSet`, from its cached features at
    ``layers`` (default: the generator's full depth; every question must have them: extract with
    ``generate score --scorer probe`` on that benchmark first)."""
    from ..data.pools import read_pool
    from ..sampling.llama_cpp import resolve_gguf

    pool = read_pool(path, allow_partial_scores=True)
    layers = list(layers or [_block_count(resolve_gguf(pool.meta["sampling"]["model"]))])
    pool_name = pool.meta.get("pool_name") or Path(path).parent.name
    feats = cached_pool_features(pool_name, pool.dataset, layers, pool.question_ids)
    missing = [q for q in pool.question_ids if q not in feats]
    if missing:
        raise ValueError(f"{path}: no cached probe features (layers {list(layers)}) for {len(missing)} of "
                         f"{pool.n_questions} questions (first {missing[:3]}); run `python -m optscale.generate score "
                         f"--scorer probe --datasets {pool.dataset} --probe-layers {','.join(map(str, layers))}` first")
    correct = {q: g.sort_values("sample_index")["correct"].to_numpy().astype(int)
               for q, g in pool.df.groupby("question_id", sort=False)}
    return ProbeTrainingSet(pool.dataset, feats, correct, {q: questions[q] for q in pool.question_ids})


def score_pool_with_probe(path: str | os.PathLike, config: Any, questions: Mapping[str, str], k: int = 5,
                          C: float = 0.01, layers: Sequence[int] | None = None, hours: float | None = None,
                          seed: int = 0, write: bool = True, head_dir: str | os.PathLike | None = None,
                          external: Sequence[ProbeTrainingSet] = ()) -> dict[str, Any]:
    """Extract (or read cached) features for every sample of the pool at ``path``, cross-fit the probe
    over its questions (K folds by question id) and write ``score__probe`` with per-fold metadata; the
    fold heads and one head trained on every pool question (for questions outside the pool) are saved
    under :func:`probe_head_dir` (or ``head_dir``). ``external``: other pools' questions added to every
    fold's training data (:func:`external_training_set`; refused if one shares a question's text with
    this pool). With ``hours`` the extraction stops early and nothing is written until every question
    has features (a later run resumes). Returns a summary."""
    from ..data.pools import read_pool, write_score_column
    from ..sampling.llama_cpp import resolve_gguf

    pool = read_pool(path, allow_partial_scores=True)
    df, meta = pool.df, pool.meta
    dataset = pool.dataset
    pool_name = meta.get("pool_name") or Path(path).parent.name
    qids = list(dict.fromkeys(df["question_id"]))
    missing = [q for q in qids if q not in questions]
    if missing:
        raise KeyError(f"{path}: questions {missing[:5]} not in the benchmark's questions")
    own = {question_digest(questions[q]) for q in qids}
    for ext in external:
        shared = sorted(q for q, text in ext.questions.items() if question_digest(text) in own)
        if shared:
            raise ValueError(f"{path}: external training set {ext.name} shares {len(shared)} question(s) with the "
                             f"pool (e.g. {shared[:3]}); a head would score a question it saw")
    t0 = time.time()
    feats = pool_features(df, questions, config.sampling, pool_name, dataset, layers=layers, hours=hours)
    elapsed = time.time() - t0
    summary: dict[str, Any] = {"dataset": dataset, "questions": len(qids), "with_features": len(feats),
                               "extract_seconds": elapsed}
    if len(feats) < len(qids):
        summary["written"] = False
        return summary
    correct = {q: g.sort_values("sample_index")["correct"].to_numpy().astype(int)
               for q, g in df.groupby("question_id", sort=False)}
    scores, folds, heads = crossfit_probe_scores(feats, correct, k=k, C=C, seed=seed,
                                                 external=[(e.name, e.features, e.correct) for e in external])
    n_blocks = _block_count(resolve_gguf(config.sampling.model))
    layers = list(layers or [n_blocks])
    timing = cached_extraction_timing(pool_name, dataset, layers)
    secs = timing["wall_seconds_per_sample"]
    description = {
        "kind": "probe",
        "what": "logistic-regression probe on the generator's hidden states (last solution token and mean "
                "over solution tokens, llama.cpp embeddings), cross-fitted by question",
        "generator": config.sampling.model, "layers": layers, "n_blocks": n_blocks, "k_folds": k, "C": C,
        "seed": seed, "feature_version": PROBE_FEATURE_VERSION, "folds": folds,
        "external": {e.name: len(e.features) for e in external},  # questions of other pools in every fold's training
        "cpu_seconds_per_sample": secs,  # wall seconds of the extracting process per sample
        "extraction_timing": timing,
    }
    if write:
        col = np.full(len(df), np.nan)
        for q, g in df.groupby("question_id", sort=False):
            order = g.sort_values("sample_index").index
            col[df.index.get_indexer(order)] = scores[q]
        write_score_column(path, "probe", col, description)
        out = Path(head_dir) if head_dir is not None else probe_head_dir(pool_name, dataset)
        for i, h in enumerate(heads):
            h.meta.update({"scored_question_ids": folds[i]["scored_question_ids"]})
            h.save(out / f"fold{i}.npz")
        X = np.concatenate([feats[q] for q in qids] + [e.features[q] for e in external for q in e.features])
        y = np.concatenate([correct[q] for q in qids] + [e.correct[q] for e in external for q in e.features])
        full = fit_probe_head(X, y, C=C, seed=seed, meta={
            "fold": "all", "pool": pool_name, "dataset": dataset, "layers": layers,
            "train_question_ids": qids,
            "external_question_ids": {e.name: list(e.features) for e in external},
            "train_question_digests": [question_digest(questions[q]) for q in qids]
            + [question_digest(e.questions[q]) for e in external for q in e.features]})
        full.save(out / "all.npz")
    summary.update({"written": write, "cpu_seconds_per_sample": secs})
    return summary


def cached_extraction_timing(pool_name: str, dataset: str, layers: Sequence[int]) -> dict[str, Any]:
    """How long the cached features took: per thread count of the extracting process (``"unrecorded"``
    for cache files written before it was recorded), the questions, samples, tokens, wall seconds per
    sample and tokens per second; and ``core_seconds_per_sample`` (wall x threads) over the files
    that record their thread count (None when none does)."""
    cache = _cache_key(pool_name, dataset, layers)
    groups: dict[str, dict[str, float]] = {}
    for f in cache.glob("*.npz"):
        if f.name.endswith(".tmp.npz"):
            continue
        z = np.load(f)
        if "seconds" not in z:
            continue
        key = str(int(z["n_threads"])) if "n_threads" in z else "unrecorded"
        g = groups.setdefault(key, {"questions": 0, "samples": 0, "tokens": 0, "seconds": 0.0})
        g["questions"] += 1
        g["samples"] += len(z["sample_index"])
        g["tokens"] += int(z["n_tokens"]) if "n_tokens" in z else 0
        g["seconds"] += float(z["seconds"])
    by_threads = {k: {**g, "seconds_per_sample": g["seconds"] / g["samples"],
                      "tokens_per_second": g["tokens"] / g["seconds"] if g["seconds"] else None}
                  for k, g in sorted(groups.items()) if g["samples"]}
    rec = {k: g for k, g in by_threads.items() if k != "unrecorded"}
    core = (sum(g["seconds"] * int(k) for k, g in rec.items()) / sum(g["samples"] for g in rec.values())
            if rec else None)
    n = sum(g["samples"] for g in by_threads.values())
    wall = sum(g["seconds"] for g in by_threads.values()) / n if n else None
    return {"by_threads": by_threads, "core_seconds_per_sample": core, "wall_seconds_per_sample": wall}


def cached_seconds_per_sample(pool_name: str, dataset: str, layers: Sequence[int]) -> float | None:
    """Mean wall seconds of feature extraction per sample over the cached questions (each file's
    extracting process, whatever its thread count: :func:`cached_extraction_timing` splits them)."""
    return cached_extraction_timing(pool_name, dataset, layers)["wall_seconds_per_sample"]


class ProbeScorer:
    """The ``probe`` scorer for new questions: features through llama.cpp, scored by a committed head
    (``head``: a :class:`ProbeHead` file, e.g. ``data/probe/<pool>/<dataset>/all.npz``). It refuses a
    question the head was trained on (by :func:`question_digest` of the text). Pools are scored by
    :func:`score_pool_with_probe` (``generate score --scorer probe``), which cross-fits instead."""

    name = "probe"

    def __init__(self, config: Any, head: str | os.PathLike | None = None, sampling: Any = None,
                 n_threads: int | None = None):
        if head is None or sampling is None:
            raise ValueError("the probe scorer needs head=<ProbeHead .npz> and sampling=<the generator's "
                             "SamplingConfig>; a pool is scored with `generate score --scorer probe`")
        from ..sampling.convert import load_chat_tokenizer
        from ..sampling.llama_cpp import resolve_gguf

        self.config = config
        self.sampling = sampling
        self.head_path = Path(head)
        self.head = ProbeHead.load(self.head_path)
        self.seen = set(self.head.meta.get("train_question_digests", []))
        full = resolve_gguf(sampling.model)
        self.layers = list(self.head.meta.get("layers") or [_block_count(full)])
        self.extractors = {L: HiddenStateExtractor(truncated_gguf(full, L), n_threads=n_threads) for L in self.layers}
        self.tokenizer = load_chat_tokenizer(sampling.model)

    def score(self, question: str, completions: Sequence[Any]) -> list[Any]:
        from .scorers import ScoreResult

        if question_digest(question) in self.seen:
            raise ValueError(f"probe head {self.head_path} was trained on this question; it never scores "
                             "a question it saw (score the pool with `generate score --scorer probe`, cross-fitted)")
        parts = []
        for L in self.layers:
            ex = self.extractors[L]
            prompt = prompt_token_ids(ex, self.sampling, question, self.tokenizer)
            parts.append(ex.features(prompt, [ex.tokenize(c.text) for c in completions]))
        s = self.head.score(np.concatenate(parts, axis=1))
        return [ScoreResult(score=float(x), step_scores=(float(x),)) for x in s]

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "head": str(self.head_path), "layers": self.layers,
                "trained_on": len(self.seen), "generator": self.sampling.model}

    def close(self) -> None:
        for ex in self.extractors.values():
            ex.close()


def cached_pool_features(pool_name: str, dataset: str, layers: Sequence[int],
                         question_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """The cached features of those of ``question_ids`` that have them (no model load): what a
    time-boxed :func:`pool_features` run has extracted so far."""
    cache = _cache_key(pool_name, dataset, layers)
    out = {}
    for qid in question_ids:
        f = cache / f"{_safe(qid)}.npz"
        if f.is_file():
            out[qid] = np.load(f)["features"]
    return out


def probe_learning_curve(features: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray],
                         train_questions: Sequence[int], k: int = 5, C: float = 0.01, seed: int = 0,
                         repeats: int = 3) -> "Any":
    """Held-out within-question AUROC of the probe against the number of training questions: for each
    size m, each of the K folds is scored by a head trained on m questions drawn from the other folds
    (``repeats`` draws). Returns a DataFrame (train_questions, train_samples, auroc_within, auroc_within_sd,
    questions_scored), the mean over folds and draws of the per-question AUROC (questions with both a
    correct and a wrong sample)."""
    import pandas as pd

    from ..evaluation.curves import auroc

    qids = [q for q in features if q in correct]
    folds = question_folds(qids, k, seed)
    rng = np.random.default_rng(seed)
    rows = []
    for m in train_questions:
        vals = []
        n_samples = []
        for _ in range(repeats):
            per_q = []
            for fold in folds:
                held = set(fold)
                pool = [q for q in qids if q not in held]
                if m > len(pool):
                    continue
                pick = list(rng.choice(pool, size=m, replace=False))
                y = np.concatenate([np.asarray(correct[q], dtype=int) for q in pick])
                if len(np.unique(y)) < 2:
                    continue
                head = fit_probe_head(np.concatenate([features[q] for q in pick]), y, C=C, seed=seed)
                n_samples.append(len(y))
                for q in fold:
                    a = auroc(head.score(features[q]), np.asarray(correct[q], dtype=bool))
                    if not np.isnan(a):
                        per_q.append(a)
            if per_q:
                vals.append(float(np.mean(per_q)))
        if vals:
            rows.append({"train_questions": m, "train_samples": int(np.mean(n_samples)),
                         "auroc_within": float(np.mean(vals)), "auroc_within_sd": float(np.std(vals)),
                         "questions_scored": len(qids)})
    return pd.DataFrame(rows)
