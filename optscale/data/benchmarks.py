"""Benchmarks as one record type, read from a configurable data directory.

The five test files of the OptScale release differ in field names (``problem`` vs
``question``) and in how the gold answer is stored (GSM8K keeps it after ``####``). They are
all read into :class:`Problem`. The data directory is, in order: the argument, the config's
``data.data_dir``, ``$OPTSCALE_DATA_DIR``, then ``../shared/data/optscale`` beside the project.
On a machine with hub access, :func:`load_benchmark` can fall back to the ``datasets`` library.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BENCHMARKS, PROJECT_ROOT

__all__ = [
    "Problem",
    "DataError",
    "resolve_data_dir",
    "load_benchmark",
    "load_predictor_labels",
    "BENCHMARK_FILES",
    "HUB_SOURCES",
]


class DataError(ValueError):
    """A data file that is missing or does not have the expected shape."""


@dataclass(frozen=True)
class Problem:
    dataset: str
    id: str
    question: str
    answer: str  # gold answer, as a string (LaTeX allowed)
    index: int  # position in the source file
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def question_hash(self) -> str:
        return hashlib.sha256(self.question.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _FileSpec:
    filename: str
    question_fields: tuple[str, ...]
    id_field: str | None
    meta_fields: tuple[str, ...] = ()
    gsm8k_answer: bool = False


BENCHMARK_FILES: dict[str, _FileSpec] = {
    "math500": _FileSpec("math500_test.json", ("problem",), "unique_id", ("subject", "level")),
    "gsm8k": _FileSpec("gsm8k_test.json", ("question",), None, gsm8k_answer=True),
    "aime24": _FileSpec("aime24.json", ("problem",), "id", ("year",)),
    "aime25": _FileSpec("aime25.json", ("question", "problem"), None),
    "amc23": _FileSpec("amc23.json", ("problem", "question"), "id"),
}

# Where the same benchmarks live on the Hugging Face hub, for machines that can reach it.
HUB_SOURCES: dict[str, tuple[str, str | None, str]] = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("yentinglin/aime_2025", None, "train"),
    "amc23": ("zwhe99/amc23", None, "test"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    candidates = [data_dir, os.environ.get("OPTSCALE_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data" / "optscale"]
    for c in candidates:
        if c:
            p = Path(c).expanduser()
            if p.is_dir():
                return p.resolve()
            if c is data_dir or c == os.environ.get("OPTSCALE_DATA_DIR"):
                raise DataError(f"data directory {p} does not exist")
    raise DataError(
        "no data directory: set OPTSCALE_DATA_DIR (or data.data_dir in the profile) to the folder "
        "holding test_prompts/ and predictor_labels/, or place the OptScale release at "
        f"{PROJECT_ROOT.parent / 'shared' / 'data' / 'optscale'}; on a machine with hub access "
        "load_benchmark(name, source='hub') reads the public copies with `datasets`"
    )


def gsm8k_gold(answer_field: str) -> str:
    if "####" not in answer_field:
        raise DataError("GSM8K answer has no '####' line")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def _read_json_list(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _records_to_problems(name: str, rows: list[Any], where: str, use_index_ids: bool = False) -> list[Problem]:
    spec = BENCHMARK_FILES[name]
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i} is not an object")
        q = next((row[f] for f in spec.question_fields if isinstance(row.get(f), str) and row[f].strip()), None)
        if q is None:
            raise DataError(f"{where}: row {i}: no question in field(s) {list(spec.question_fields)}")
        raw = row.get("answer")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise DataError(f"{where}: row {i}: field 'answer' is missing or empty")
        try:
            gold = gsm8k_gold(str(raw)) if spec.gsm8k_answer else str(raw).strip()
        except DataError as e:
            raise DataError(f"{where}: row {i}: field 'answer': {e}") from None
        has_id = spec.id_field and row.get(spec.id_field) is not None and not use_index_ids
        pid = str(row[spec.id_field]) if has_id else str(i)
        meta = {f: row[f] for f in spec.meta_fields + ("solution",) if f in row}
        problems.append(Problem(dataset=name, id=pid, question=q.strip(), answer=gold, index=i, meta=meta))
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: duplicate question ids")
    return problems


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    source: str = "local",
) -> list[Problem]:
    """Load one benchmark as a list of :class:`Problem` (first ``limit`` in file order)."""
    if name not in BENCHMARK_FILES:
        raise DataError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")
    if source == "local":
        path = resolve_data_dir(data_dir) / "test_prompts" / BENCHMARK_FILES[name].filename
        problems = _records_to_problems(name, _read_json_list(path), str(path))
    elif source == "hub":
        problems = _load_from_hub(name)
    else:
        raise DataError(f"source must be 'local' or 'hub', got {source!r}")
    return problems[:limit] if limit else problems


def _load_from_hub(name: str) -> list[Problem]:  # pragma: no cover - needs hub access
    try:
        import datasets
    except ImportError:
        raise DataError("source='hub' needs the `datasets` package (pip install datasets)") from None
    repo, subset, split = HUB_SOURCES[name]
    try:
        ds = datasets.load_dataset(repo, subset, split=split)
    except Exception as e:
        raise DataError(f"could not load {repo} from the hub ({type(e).__name__}: {e}); "
                        "set OPTSCALE_DATA_DIR to a local copy instead") from None
    return _records_to_problems(name, [dict(r) for r in ds], f"hub:{repo}")


def load_predictor_labels(data_dir: str | os.PathLike | None = None, split: str = "train"):
    """(problems, labels) for the predictor: labels is an (n, 2) float array of [mean, std].

    ``split='train'``: the 4,501 MATH training problems; ``split='math500'``: the released
    MATH-500 labels (see the data README for why they look misaligned).
    """
    import numpy as np

    root = resolve_data_dir(data_dir)
    if split == "train":
        qpath = root / "predictor_labels" / "train_data.json"
        lpath = root / "predictor_labels" / "train_mu_sigma.json"
        # MATH train files repeat unique_ids across subjects: the row index is the id here.
        problems = _records_to_problems("math500", _read_json_list(qpath), str(qpath), use_index_ids=True)
        problems = [Problem("math-train", p.id, p.question, p.answer, p.index, p.meta) for p in problems]
    elif split == "math500":
        lpath = root / "predictor_labels" / "val_mu_sigma.json"
        problems = load_benchmark("math500", root)
    else:
        raise DataError(f"split must be 'train' or 'math500', got {split!r}")
    rows = _read_json_list(lpath)
    if len(rows) != len(problems):
        raise DataError(f"{lpath}: {len(rows)} label rows for {len(problems)} problems")
    labels = np.empty((len(rows), 2), dtype=float)
    for i, r in enumerate(rows):
        if not isinstance(r, (list, tuple)) or len(r) != 2:
            raise DataError(f"{lpath}: row {i}: expected [mean, std], got {r!r}")
        for j, fieldname in enumerate(("mean", "std")):
            try:
                labels[i, j] = float(r[j])
            except (TypeError, ValueError):
                raise DataError(f"{lpath}: row {i}: field {fieldname!r} is not a number: {r[j]!r}") from None
            if not np.isfinite(labels[i, j]):
                raise DataError(f"{lpath}: row {i}: field {fieldname!r} is not finite: {r[j]!r}")
        # The labels are the mean and std of sample scores, which live in [0, 1]: the mean is in
        # [0, 1] and the std in [0, 0.5] (the largest std of values in [0, 1]).
        for j, fieldname, hi in ((0, "mean", 1.0), (1, "std", 0.5)):
            if not 0.0 <= labels[i, j] <= hi:
                raise DataError(f"{lpath}: row {i}: field {fieldname!r} = {r[j]!r} is outside [0, {hi:g}]; the "
                                f"labels are the mean and std of sample scores, which live in [0, 1]")
    return problems, labels
