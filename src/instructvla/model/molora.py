"""Mixture of LoRA experts on a decoder LLM: batched A/B experts + a per-token scale head (single pass by default).

Experts attach to the target `nn.Linear`s through forward hooks, so the base model's parameter names and its own
`save_pretrained` stay untouched. Mixture weights are w = K * softmax(gate(x) / T) per token; with the gate's last
layer zero-initialised w = (1, ..., 1) exactly, so a stage-2 model whose extra experts have B = 0 reproduces its
stage-1 source. The gate reads the LLM's input embeddings (default; works with KV-cache generation and gradient
checkpointing) or, as in the paper, the adapter-free last hidden state (`router_input="adapter_free_hidden"`: a
no-grad first pass with the adapters disabled, keeping its own KV cache during generation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
ROUTER_INPUTS = ("embeddings", "adapter_free_hidden")


@dataclass
class MoLoRAConfig:
    """LoRA experts + scale head.

    rank, alpha, dropout: LoRA sizes (scaling alpha / rank). targets: Linear names inside the decoder layers
    (method: attention q/k/v/o and MLP up/down, not gate). num_experts: 1 = plain LoRA (no gate).
    gate_hidden / gate_depth / gate_dropout: scale head MLP (depth = number of Linear layers, XLoRA: 4, 128, 0.2).
    temperature: softmax temperature. router_input: "embeddings" | "adapter_free_hidden".
    """

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    num_experts: int = 1
    gate_hidden: int = 128
    gate_depth: int = 4
    gate_dropout: float = 0.2
    temperature: float = 1.0
    router_input: str = "embeddings"

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"MoLoRAConfig.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"MoLoRAConfig.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MoLoRAConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.num_experts < 1:
            raise ValueError(f"MoLoRAConfig.num_experts must be >= 1, got {self.num_experts}")
        if self.gate_depth < 1:
            raise ValueError(f"MoLoRAConfig.gate_depth must be >= 1, got {self.gate_depth}")
        if self.temperature <= 0:
            raise ValueError(f"MoLoRAConfig.temperature must be > 0, got {self.temperature}")
        if self.router_input not in ROUTER_INPUTS:
            raise ValueError(f"MoLoRAConfig.router_input must be one of {ROUTER_INPUTS}, got {self.router_input!r}")
        if not self.targets:
            raise ValueError("MoLoRAConfig.targets must not be empty")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRAExperts(nn.Module):
    """K LoRA experts for one Linear(in, out): A (K, r, in), B (K, out, r)."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, rank: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_features, rank))
        for k in range(num_experts):
            nn.init.kaiming_uniform_(self.lora_A[k], a=math.sqrt(5))  # peft's default A init

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0]

    def delta(self, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Sum_k w_k * B_k A_k x (no scaling). weights: (..., K) per token, or None for K == 1."""
        a = self.lora_A.to(x.dtype)
        b = self.lora_B.to(x.dtype)
        if weights is None:
            if self.num_experts != 1:
                raise RuntimeError("mixture weights missing for a multi-expert LoRA (gate did not run)")
            return F.linear(F.linear(x, a[0]), b[0])
        out = None
        for k in range(self.num_experts):  # loop keeps expert 0's arithmetic identical to a single LoRA
            h = F.linear(x, a[k]) * weights[..., k : k + 1].to(x.dtype)
            d = F.linear(h, b[k])
            out = d if out is None else out + d
        return out


class ScaleHead(nn.Module):
    """Per-token expert weights: MLP(d -> hidden ... -> K), last layer zero-init; w = K * softmax(logits / T)."""

    def __init__(self, in_dim: int, num_experts: int, hidden: int, depth: int, dropout: float, temperature: float):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
            dim = hidden
        last = nn.Linear(dim, num_experts)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.num_experts = num_experts
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x.to(self.net[-1].weight.dtype))
        return self.num_experts * torch.softmax(logits.float() / self.temperature, dim=-1)


class _State:
    """Per-forward shared state read by every hooked Linear (not a module: holds no parameters)."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None
        self.enabled = True
        self.in_router_pass = False
        self.router_cache = None
        self.last_input: tuple[torch.Tensor, torch.Tensor] | None = None


def _key(path: str) -> str:
    return path.replace(".", "__")


class MoLoRA(nn.Module):
    """Mixture of LoRA experts attached to the decoder layers of `text_model` (a HF decoder such as Qwen2Model).

    Args:
        text_model: the decoder (must have `.layers` and take `inputs_embeds`/`input_ids`).
        config: `MoLoRAConfig`.
        prefix: module path of `text_model` inside the model that will be exported to peft (for key names).
    """

    def __init__(self, text_model: nn.Module, config: MoLoRAConfig, prefix: str = ""):
        super().__init__()
        self.config = config
        self.prefix = prefix
        self.state = _State()
        self.adapters = nn.ModuleDict()
        self._paths: dict[str, str] = {}
        self._handles: list = []
        self._text_model = [text_model]  # list: keep it out of this module's children / state_dict
        for name, mod in text_model.named_modules():
            if isinstance(mod, nn.Linear) and name.split(".")[-1] in config.targets and ".layers." in f".{name}":
                key = _key(name)
                self.adapters[key] = LoRAExperts(mod.in_features, mod.out_features, config.num_experts, config.rank)
                self._paths[key] = name
                self._handles.append(mod.register_forward_hook(self._make_hook(key)))
        if not self.adapters:
            raise ValueError(f"no Linear named {config.targets} found in the decoder layers")
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._handles.append(text_model.register_forward_hook(self._clear_dropout_cache))
        self.gate = None
        if config.num_experts > 1:
            hidden = text_model.get_input_embeddings().weight.shape[1]
            self.gate = ScaleHead(hidden, config.num_experts, config.gate_hidden, config.gate_depth,
                                  config.gate_dropout, config.temperature)
            self._handles.append(text_model.register_forward_pre_hook(self._route, with_kwargs=True))

    # ---- hooks --------------------------------------------------------------------------------------------------
    def _make_hook(self, key: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.state.enabled:
                return None
            x = self._dropped(args[0])
            d = self.adapters[key].delta(x, self.state.weights if self.gate is not None else None)
            return output + d * self.config.scaling

        return hook

    def _clear_dropout_cache(self, *args) -> None:
        self.state.last_input = None

    def _dropped(self, x: torch.Tensor) -> torch.Tensor:
        """LoRA dropout, drawn once per distinct input (q/k/v share one input tensor, hence one mask)."""
        if not self.training or isinstance(self.dropout, nn.Identity):
            return x
        last = self.state.last_input
        if last is not None and last[0] is x:
            return last[1]
        out = self.dropout(x)
        self.state.last_input = (x, out)
        return out

    def _route(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.state.in_router_pass or not self.state.enabled:
            return None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = module.get_input_embeddings()(ids)
        if self.config.router_input == "embeddings":
            self.state.weights = self.gate(embeds)
            return None
        # Paper's router: adapter-free last hidden state from a no-grad first pass (with its own KV cache).
        cache_kw = "cache" if "cache" in kwargs else "past_key_values"
        main_cache = kwargs.get(cache_kw)
        router_kwargs = {k: v for k, v in kwargs.items() if k not in ("input_ids", "inputs_embeds", cache_kw)}
        default_use = bool(getattr(getattr(module, "config", None), "use_cache", False))
        if main_cache is not None and main_cache.get_seq_length() > 0:  # decoding step: continue our own cache
            if self.state.router_cache is None:
                raise RuntimeError("adapter_free_hidden router: a decoding step without the router's prefix cache")
            router_kwargs[cache_kw] = self.state.router_cache
        elif main_cache is not None or kwargs.get("use_cache", default_use):  # a new prefix that will be cached
            from transformers import DynamicCache

            self.state.router_cache = DynamicCache()
            router_kwargs[cache_kw] = self.state.router_cache
            router_kwargs["use_cache"] = True
        else:
            self.state.router_cache = None
            router_kwargs["use_cache"] = False
        self.state.in_router_pass = True
        self.state.enabled = False
        try:
            with torch.no_grad():
                out = module(inputs_embeds=embeds, **router_kwargs)
        finally:
            self.state.in_router_pass = False
            self.state.enabled = True
        self.state.weights = self.gate(out.last_hidden_state)
        return None

    # ---- control ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model without any adapter."""
        prev = self.state.enabled
        self.state.enabled = False
        try:
            yield
        finally:
            self.state.enabled = prev

    def detach(self) -> None:
        """Remove all hooks (the base model is then plain again)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def last_weights(self) -> torch.Tensor | None:
        """Mixture weights (B, T, K) of the latest forward (for routing analysis)."""
        return self.state.weights

    def lora_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.gate.parameters()) if self.gate is not None else []

    def num_lora_parameters(self) -> int:
        return sum(p.numel() for p in self.lora_parameters())

    # ---- stage 1 -> stage 2 ---------------------------------------------------------------------------------------
    def load_from_single(self, single: MoLoRA, expert: int = 0) -> None:
        """Copy a 1-expert MoLoRA's weights into expert `expert`; every other expert keeps B = 0 (zero output)."""
        if single.config.num_experts != 1 or single.config.rank != self.config.rank:
            raise ValueError("load_from_single needs a 1-expert source with the same rank")
        if set(single.adapters) != set(self.adapters):
            raise ValueError("source and target LoRA have different target modules")
        with torch.no_grad():
            for key, ad in self.adapters.items():
                ad.lora_A[expert].copy_(single.adapters[key].lora_A[0])
                ad.lora_B[expert].copy_(single.adapters[key].lora_B[0])
                for k in range(ad.num_experts):
                    if k != expert:
                        ad.lora_B[k].zero_()

    # ---- peft interop ---------------------------------------------------------------------------------------------
    def _peft_path(self, key: str) -> str:
        return f"{self.prefix}.{self._paths[key]}" if self.prefix else self._paths[key]

    def export_peft(self, path: str | os.PathLike, expert: int = 0) -> None:
        """Write expert `expert` as a plain peft LoRA adapter (adapter_config.json + adapter_model.safetensors)."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
            target_modules=sorted(self._peft_path(k) for k in self.adapters), bias="none",
        )
        cfg.save_pretrained(str(path))
        tensors = {}
        for key, ad in self.adapters.items():
            base = f"base_model.model.{self._peft_path(key)}"
            tensors[f"{base}.lora_A.weight"] = ad.lora_A[expert].detach().float().contiguous().clone()
            tensors[f"{base}.lora_B.weight"] = ad.lora_B[expert].detach().float().contiguous().clone()
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})

    def import_peft(self, path: str | os.PathLike, expert: int = 0) -> None:
        """Load a plain peft LoRA adapter directory into expert `expert` (rank and targets must match)."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / "adapter_config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found (not a peft adapter directory)")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("peft_type") != "LORA" or int(cfg.get("r", -1)) != self.config.rank:
            raise ValueError(f"{cfg_file}: need peft_type LORA with r={self.config.rank}, got "
                             f"{cfg.get('peft_type')} r={cfg.get('r')}")
        if float(cfg.get("lora_alpha", -1)) != float(self.config.alpha):
            raise ValueError(f"{cfg_file}: lora_alpha {cfg.get('lora_alpha')} != {self.config.alpha}")
        tensors = load_file(str(path / "adapter_model.safetensors"))
        expected = set()
        with torch.no_grad():
            for key, ad in self.adapters.items():
                base = f"base_model.model.{self._peft_path(key)}"
                for name, param in (("lora_A", ad.lora_A), ("lora_B", ad.lora_B)):
                    tkey = f"{base}.{name}.weight"
                    expected.add(tkey)
                    if tkey not in tensors:
                        raise KeyError(f"{path}: adapter has no tensor {tkey!r}")
                    param[expert].copy_(tensors[tkey])
        extra = set(tensors) - expected
        if extra:
            raise KeyError(f"{path}: unexpected adapter tensors, e.g. {sorted(extra)[0]!r}")

    def extra_repr(self) -> str:
        return f"{asdict(self.config)}, modules={len(self.adapters)}"
