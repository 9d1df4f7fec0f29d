"""The paper-style prior predictor: a causal LM with its last layers trainable, attention pooling and
MLP heads (GPU when available), registered as backbone ``"lm"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.benchmarks import Problem
from .heads import _texts_metas, check_labels
from .prior import PriorPrediction, _make_prediction

__all__ = ["LMPriorPredictor"]


# -- paper-style LM backbone ------------------------------------------------------------------
@dataclass
class LMPriorPredictor:
    """Causal-LM encoder (last ``trainable_layers`` trainable), attention pooling, MLP heads.

    The OptScale paper's predictor, with ``model`` a local path or hub id (e.g.
    DeepSeek-R1-Distill-Qwen-1.5B, needs a GPU and the weights). ``model_config`` (a
    ``transformers`` config dict, e.g. a tiny ``Qwen2Config``) builds a randomly initialised model
    instead; the CPU test uses that. ``tokenizer`` defaults to ``model``; with ``model_config`` it
    must be given (the bundled MiniLM WordPiece tokenizer works). Trained with MSE on
    [mean, std]; uncertainty is the RMSE on a seeded validation slice of the training rows.
    """

    model: str | None = None
    model_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    trainable_layers: int = 2
    mlp_hidden: int = 256
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-4
    head_lr: float = 1e-3
    max_length: int = 512
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.model_config is None):
            raise ValueError("LMPriorPredictor: give exactly one of model (path/id) or model_config (dict)")
        self._net = None

    def _device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _build(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        torch.manual_seed(self.seed)
        if self.model_config is not None:
            conf = dict(self.model_config)
            mtype = conf.pop("model_type")
            base = AutoModel.from_config(AutoConfig.for_model(mtype, **conf))
        else:
            base = AutoModel.from_pretrained(self.model, torch_dtype=torch.bfloat16 if self._device() == "cuda" else None)
        tok_src = self.tokenizer or self.model
        if tok_src is None:
            raise ValueError("LMPriorPredictor: model_config needs an explicit tokenizer path")
        self._tok = AutoTokenizer.from_pretrained(tok_src)
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._net = _LMNet(base, self.trainable_layers, self.mlp_hidden).to(self._device())

    def _batches(self, texts: list[str]):
        for i in range(0, len(texts), self.batch_size):
            enc = self._tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt")
            yield i, {k: v.to(self._device()) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def fit(self, items: Sequence[Problem | str], labels: Any) -> "LMPriorPredictor":
        import torch

        texts, _ = _texts_metas(items)
        Y = check_labels(labels, len(texts))
        self._build()
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(texts))
        n_val = max(1, int(round(self.val_fraction * len(texts)))) if len(texts) > 4 else 0
        val, tr = perm[:n_val], perm[n_val:]
        net = self._net
        groups = [{"params": [p for p in net.base.parameters() if p.requires_grad], "lr": self.lr},
                  {"params": list(net.pool.parameters()) + list(net.heads.parameters()), "lr": self.head_lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
        gen = torch.Generator().manual_seed(self.seed)
        losses = []
        for _ in range(self.epochs):
            net.train()
            order = tr[torch.randperm(len(tr), generator=gen).numpy()]
            tr_texts = [texts[i] for i in order]
            for i, batch in self._batches(tr_texts):
                y = torch.as_tensor(Y[order[i:i + self.batch_size]], dtype=torch.float32, device=self._device())
                loss = torch.nn.functional.mse_loss(net(**batch), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        if n_val:
            pv = self._raw_predict([texts[i] for i in val])
            self.unc_ = np.sqrt(np.mean((pv - Y[val]) ** 2, axis=0))
        else:
            self.unc_ = Y.std(axis=0)
        self.info = {"n_train": int(len(tr)), "n_val": int(n_val), "final_loss": losses[-1] if losses else None,
                     "val_rmse": self.unc_.tolist()}
        return self

    def _raw_predict(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._net is None:
            raise RuntimeError("predictor is not fitted; call fit() or load()")
        self._net.eval()
        out = np.empty((len(texts), 2))
        with torch.no_grad():
            for i, batch in self._batches(texts):
                out[i:i + len(batch["input_ids"])] = self._net(**batch).float().cpu().numpy()
        return out

    def predict_moments(self, items: Sequence[Problem | str]) -> tuple[np.ndarray, np.ndarray]:
        texts, _ = _texts_metas(items)
        mom = self._raw_predict(texts)
        return mom, np.tile(self.unc_, (len(texts), 1))

    def predict(self, items: Sequence[Problem | str]) -> PriorPrediction:
        return _make_prediction(*self.predict_moments(items))

    def save(self, path: str | Path) -> Path:
        """Trainable weights (all weights when the base model was built from a config)."""
        import torch

        if self._net is None:
            raise RuntimeError("nothing to save: predictor is not fitted")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = self.model_config is not None
        state = {k: v for k, v in self._net.state_dict().items()
                 if full or not k.startswith("base.") or self._net.is_trainable(k)}
        torch.save(state, path / "lm_predictor.pt")
        meta = {k: v for k, v in asdict(self).items()}
        meta.update(kind="lm", unc=self.unc_.tolist(), full_state=full)
        (path / "predictor.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LMPriorPredictor":
        import torch

        path = Path(path)
        meta = json.loads((path / "predictor.json").read_text())
        unc = np.asarray(meta.pop("unc"))
        for k in ("kind", "full_state"):
            meta.pop(k, None)
        obj = cls(**meta)
        obj._build()
        state = torch.load(path / "lm_predictor.pt", map_location=obj._device())
        missing, unexpected = obj._net.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{path}: unexpected weights {unexpected[:3]}")
        obj.unc_ = unc
        return obj


def _lm_net_class():
    import torch
    from torch import nn

    class AttentionPooling(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.score = nn.Linear(d, 1)

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            w = self.score(h).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
            a = torch.softmax(w, dim=-1).to(h.dtype)
            return torch.einsum("bt,btd->bd", a, h)

    class LMNet(nn.Module):
        def __init__(self, base: nn.Module, trainable_layers: int, hidden: int):
            super().__init__()
            self.base = base
            layers = _decoder_layers(base)
            for p in base.parameters():
                p.requires_grad = False
            self._trainable_prefixes = []
            n = len(layers)
            for i in range(max(0, n - trainable_layers), n):
                for p in layers[i].parameters():
                    p.requires_grad = True
            for name, p in base.named_parameters():
                if p.requires_grad:
                    self._trainable_prefixes.append("base." + name)
            norm = getattr(base, "norm", None)
            if norm is not None and trainable_layers > 0:
                for name, p in norm.named_parameters():
                    p.requires_grad = True
                    self._trainable_prefixes.append("base.norm." + name)
            d = base.config.hidden_size
            self.pool = AttentionPooling(d)
            self.heads = nn.ModuleList([
                nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 1))
                for _ in range(2)])

        def is_trainable(self, key: str) -> bool:
            return key in self._trainable_prefixes

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            z = self.pool(h, attention_mask).float()
            mean = torch.sigmoid(self.heads[0](z))
            std = 0.5 * torch.sigmoid(self.heads[1](z))
            return torch.cat([mean, std], dim=-1)

    return LMNet


def _decoder_layers(base: Any) -> Any:
    for attr in ("layers", "h", "decoder.layers"):
        obj = base
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise ValueError(f"{type(base).__name__}: cannot find the decoder layers to unfreeze")


def _LMNet(base: Any, trainable_layers: int, hidden: int) -> Any:
    return _lm_net_class()(base, trainable_layers, hidden)
