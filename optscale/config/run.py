"""The whole run configuration (:class:`RunConfig`), built from defaults, a profile (with
``extends``) and dotted overrides; unknown keys raise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .checks import _validate
from .sections import (BENCHMARKS, DEFAULT_PROFILE, ConfigError, DataConfig, EvaluationConfig, FitConfig, PROFILES_DIR, PoolConfig,
                       PredictorConfig, SamplingConfig, ScoringConfig, SystemsConfig, TheoryConfig)

__all__ = ["RunConfig", "load_config", "profile_path", "available_profiles"]


@dataclass(frozen=True)
class RunConfig:
    profile: str = "cpu"
    run_id: str = ""  # empty: derived from profile and time by run_all.sh
    output_root: str = "outputs"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pools: PoolConfig = field(default_factory=PoolConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    systems: SystemsConfig = field(default_factory=SystemsConfig)

    def __post_init__(self) -> None:
        _validate(self)

    # -- conveniences -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def replace(self, overrides: Mapping[str, Any] | None = None, **flat: Any) -> "RunConfig":
        """A copy with nested overrides (``{"sampling": {"seed": 1}}``) or dotted keys."""
        merged = self.to_dict()
        _deep_update(merged, _expand_dotted({**(overrides or {}), **flat}), path="")
        return _from_dict(RunConfig, merged, path="")

    def run_dir(self) -> Path:
        return Path(self.output_root) / (self.run_id or self.profile)


# -- dict <-> dataclass ---------------------------------------------------------------------
def _expand_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _deep_update(base: dict[str, Any], new: Mapping[str, Any], path: str) -> None:
    for k, v in new.items():
        where = f"{path}{k}"
        if k not in base:
            close = [c for c in base if c.startswith(k[:3])]
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"unknown config key {where!r}{hint}")
        if isinstance(base[k], dict) and not isinstance(v, Mapping):
            if not _is_section(base[k]):
                raise ConfigError(f"config key {where!r} is a per-benchmark table; set its entries, "
                                  f"e.g. {where}.<benchmark>=...")
            raise ConfigError(f"config key {where!r} is a section; set its fields, e.g. {where}.<field>=...")
        if isinstance(base[k], dict) and isinstance(v, Mapping):
            # Per-benchmark tables are replaced key by key; sections recurse.
            _deep_update(base[k], v, path=where + ".") if _is_section(base[k]) else base[k].update(v)
        else:
            base[k] = v


def _is_section(d: dict[str, Any]) -> bool:
    # A per-benchmark table has only benchmark names as keys (an empty one too, e.g.
    # scoring.primary_by_benchmark); sections have field names, and every section has some.
    return not set(d) <= set(BENCHMARKS)


def _coerce(key: str, v: Any, default: Any, annotation: str) -> Any:
    """``v`` as the type of the field's default (int -> float where a float is expected, a list ->
    a tuple, ``"a, b"`` -> a tuple of names), else a ConfigError naming the key, the value and the
    type expected."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} = {v!r}: expected {expected}, got {type(v).__name__}")

    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad("a finite number")
        v = float(v)
    elif isinstance(default, str) or (default is None and "str" in annotation):
        if not isinstance(v, str) and not (v is None and default is None):
            raise bad("a string")
    elif isinstance(default, tuple):
        if isinstance(v, str) and (not default or isinstance(default[0], str)):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, (list, tuple)):
            raise bad(f"a list, e.g. {list(default) or ['...']}")
        elem = default[0] if default else ("" if "tuple[str" in annotation else None)
        v = tuple(_coerce(f"{key}[{i}]", x, elem, "") if elem is not None else x for i, x in enumerate(v))
    return v


def _from_dict(cls: type, data: Mapping[str, Any], path: str) -> Any:
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in fields(cls)}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"unknown config key {path + k!r}")
        f = names[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(v, Mapping):
            v = _from_dict(type(default), v, path=f"{path}{k}.")
        elif not isinstance(default, dict):  # per-benchmark tables are checked in _validate
            v = _coerce(path + k, v, default, str(f.type))
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{path or 'config'}: {e}") from None


# -- profiles -------------------------------------------------------------------------------
def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = PROFILES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"no profile {name!r}; available: {available_profiles()}")
    return p


def _read_profile(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ConfigError(f"profile cycle: {' -> '.join(seen + (name,))}")
    path = profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a mapping")
    parent = raw.pop("extends", None)
    merged = _read_profile(parent, seen + (name,)) if parent else {}
    _merge_plain(merged, raw)
    return merged


def _merge_plain(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge_plain(base[k], v)
        else:
            base[k] = v


def parse_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides as a mapping, a JSON/YAML mapping string, or ``"a.b=1, c.d=x"`` pairs."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    text = overrides.strip()
    if text.startswith("{"):
        loaded = _yaml_value(text, f"overrides {text!r}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"overrides {overrides!r} is not a mapping")
        return loaded
    out: dict[str, Any] = {}
    for item in _split_overrides(text):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"override {item.strip()!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = _yaml_value(v.strip(), f"override {item.strip()!r}")
    return out


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not a valid value ({getattr(e, 'problem', None) or e})") from None


def _split_overrides(text: str) -> list[str]:
    """``"a=1, b=[0.1, 0.05]; c={x: 1}"`` -> the ``key=value`` items: split at commas, semicolons and
    newlines outside brackets, braces and quoted strings (a quote opens a string only where YAML
    starts a value: after ``=``, ``[``, ``{``, ``,`` or ``:``)."""
    items, cur, depth, quote, prev = [], [], 0, "", "="
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'" and prev in "=[{,:":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch in ",;\n" and depth <= 0:
            items.append("".join(cur))
            cur, prev, depth = [], "=", 0
            continue
        cur.append(ch)
        prev = ch if not ch.isspace() else prev
    items.append("".join(cur))
    if depth > 0 or quote:
        raise ConfigError(f"overrides {text!r}: unclosed {'quote' if quote else 'bracket'}")
    return items


def load_config(
    profile: str = DEFAULT_PROFILE, overrides: str | Mapping[str, Any] | None = None, run_id: str | None = None
) -> RunConfig:
    """Defaults <- profile (with ``extends``) <- overrides. Unknown keys raise ConfigError."""
    if not isinstance(profile, (str, os.PathLike)):
        raise ConfigError(f"profile {profile!r}: expected a profile name (a string), got {type(profile).__name__}")
    if overrides is not None and not isinstance(overrides, (str, Mapping)):
        raise ConfigError(f"overrides {overrides!r}: expected a string of key=value overrides or a mapping, "
                          f"got {type(overrides).__name__}")
    if run_id is not None and not isinstance(run_id, str):
        raise ConfigError(f"run_id {run_id!r}: expected a string, got {type(run_id).__name__}")
    base = RunConfig().to_dict()
    prof = _read_profile(profile)
    prof.setdefault("profile", Path(profile).stem)
    _deep_update(base, _expand_dotted(prof), path="")
    _deep_update(base, _expand_dotted(parse_overrides(overrides)), path="")
    if run_id is not None:
        base["run_id"] = run_id
    if os.environ.get("OPTSCALE_DATA_DIR") and base["data"]["data_dir"] is None:
        base["data"]["data_dir"] = os.environ["OPTSCALE_DATA_DIR"]
    return _from_dict(RunConfig, base, path="")
