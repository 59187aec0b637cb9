"""The InstructVLA model: VLM backbone + mixture of LoRA experts + latent action queries + flow-matching action expert.

Training forward (FM + LM loss), action prediction (optionally "thinking" first), text generation with KV cache,
one-directory checkpoints, and the per-stage trainable parameter sets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructvla.model import tokenizer as tk
from instructvla.model.action_expert import ActionExpert, ActionExpertConfig
from instructvla.model.backbone import Backbone
from instructvla.model.config import InstructVLAConfig
from instructvla.model.molora import MoLoRA, MoLoRAConfig
from instructvla.model.presets import PRESETS, get_preset
from instructvla.model.processor import IGNORE_INDEX, ProcessorSpec, VLAProcessor, action_prompt

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORM_FILE = "normalization.json"
FORMAT_VERSION = 1
# Which action-expert preset goes with a backbone preset by default.
_EXPERT_FOR_PRESET = {"tiny": "tiny", "tiny-smolvlm": "tiny", "small": "small", "base": "base"}
# ActionExpert.loss_terms key -> (ActionExpertConfig weight field, name in the forward output and metrics.jsonl)
_EXPERT_TERMS = (("keypoint", "keypoint_loss_weight", "kp_loss"),  # (term, its weight in the expert config, metric)
                 ("keypoint_heatmap", "keypoint_heatmap_weight", "kp_heatmap_loss"),
                 ("object_keypoint", "object_keypoint_weight", "object_kp_loss"),
                 ("fm_cumulative", "cumulative_loss_weight", "fm_cumulative_loss"))


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise ValueError("module not found inside the model")


class InstructVLA(nn.Module):
    """InstructVLA (method.md §2). Build with `from_preset`, `from_pretrained` or `InstructVLA(config)`.

    Attributes: `config`, `backbone` (Backbone: HF VLM + tokenizer), `molora` (LoRA experts, gate in stage 2),
    `action_expert` (ActionExpert), `query_ids` (latent query token ids), `norm_stats` (dataset stats or None).
    """

    def __init__(
        self,
        config: InstructVLAConfig,
        backbone: Backbone | None = None,
        action_expert_config: ActionExpertConfig | None = None,
    ):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if backbone is None:
                backbone = (Backbone.from_preset(config.backbone, seed=None) if config.backbone_is_preset
                            else Backbone.from_pretrained(config.backbone))
            if backbone._attached or backbone._row_hooks:
                logger.warning("backbone already carries another model's LoRA hooks; detaching them (that model "
                               "now runs without adapters). Use InstructVLA.release_backbone() to do this explicitly.")
                self._detach_all(backbone)
            self.backbone = backbone
            self.query_ids = tk.add_query_tokens(backbone.tokenizer, config.num_queries)
            backbone.resize_embeddings(max(len(backbone.tokenizer), self.query_ids[-1] + 1))
            rank, alpha = self._lora_sizes()
            moe = config.moe
            lcfg = MoLoRAConfig(
                rank=rank, alpha=alpha, dropout=config.lora.dropout, targets=config.lora.targets,
                num_experts=1 if config.stage == 1 else moe.num_experts, gate_hidden=moe.gate_hidden,
                gate_depth=moe.gate_depth, gate_dropout=moe.gate_dropout, temperature=moe.temperature,
                router_input=moe.router_input,
            )
            text_model = backbone.text_model
            self.molora = MoLoRA(text_model, lcfg, prefix=_module_path(backbone.hf, text_model))
            backbone._attached.append(self.molora)
            if action_expert_config is None:
                action_expert_config = ActionExpertConfig.preset(
                    config.action_expert, latent_dim=backbone.hidden_size, **config.action_expert_overrides
                )
            if action_expert_config.latent_dim != backbone.hidden_size:
                raise ValueError(f"action expert latent_dim {action_expert_config.latent_dim} != LLM hidden size "
                                 f"{backbone.hidden_size}")
            self.action_expert = ActionExpert(action_expert_config)
        self.norm_stats: dict | None = None
        self._restrict_rows = True
        self._row_mask: torch.Tensor | None = None
        self._register_row_hooks()
        self._processor: VLAProcessor | None = None
        self.eval()

    @staticmethod
    def _detach_all(backbone: Backbone) -> None:
        for mol in backbone._attached:
            mol.detach()
        backbone._attached.clear()
        for handle in backbone._row_hooks:
            handle.remove()
        backbone._row_hooks.clear()

    def release_backbone(self) -> Backbone:
        """Remove this model's LoRA hooks and embedding-row gradient hooks and return the plain backbone (to build
        another model on the same VLM weights, e.g. stage 1 from a stage-0 checkpoint). This model is unusable
        afterwards."""
        self._detach_all(self.backbone)
        return self.backbone

    def _lora_sizes(self) -> tuple[int, float]:
        lora = self.config.lora
        if lora.rank is not None:
            return lora.rank, float(lora.alpha if lora.alpha is not None else 2 * lora.rank)
        preset = get_preset(self.config.backbone) if self.config.backbone_is_preset else get_preset("base")
        return preset.lora_rank, float(lora.alpha if lora.alpha is not None else preset.lora_alpha)

    # ---- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str = "tiny", **overrides: Any) -> InstructVLA:
        """A random-init model: backbone preset `name` ("tiny", "tiny-smolvlm", "small", "base") with its action
        expert preset; `overrides` are InstructVLAConfig fields (unknown ones raise naming the key)."""
        get_preset(name)
        data = {"backbone": name, "action_expert": _EXPERT_FOR_PRESET.get(name, "tiny"), **overrides}
        return cls(InstructVLAConfig.from_dict(data))

    @property
    def device(self) -> torch.device:
        return self.action_expert.action_in.weight.device

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def processor(self) -> VLAProcessor:
        """Sample -> batch converter matching this model."""
        if self._processor is None:
            ae = self.action_expert.cfg
            ad = self.backbone.adapter
            spec = ProcessorSpec(
                image_token_ids=self.backbone.image_token_ids(), vlm_image_size=self.backbone.image_size,
                image_mean=ad.image_mean, image_std=ad.image_std, query_ids=list(self.query_ids),
                num_views=ae.num_views, image_size=self.config.image_size, max_length=self.config.max_length,
                chunk_size=ae.chunk_size, action_dim=ae.action_dim, state_dim=ae.state_dim, use_state=ae.use_state,
            )
            self._processor = VLAProcessor(self.tokenizer, spec, dino_preprocess=self._dino_preprocess_cpu)
        return self._processor

    def _dino_preprocess_cpu(self, images: torch.Tensor) -> torch.Tensor:
        # The action expert's normalisation buffers may live on the GPU; data loaders run on CPU.
        with torch.no_grad():
            return self.action_expert.preprocess_images(images.to(self.device)).to(images.device)

    # ---- embedding rows: only the query rows may change ------------------------------------------------------------
    def _register_row_hooks(self) -> None:
        params = {id(p): p for p in (self.backbone.input_embeddings().weight, self.backbone.output_embeddings().weight)}
        for p in params.values():
            self.backbone._row_hooks.append(p.register_hook(self._mask_rows))

    def _mask_rows(self, grad: torch.Tensor) -> torch.Tensor:
        if not self._restrict_rows:
            return grad
        if self._row_mask is None or self._row_mask.shape[0] != grad.shape[0] or self._row_mask.device != grad.device:
            mask = torch.zeros(grad.shape[0], 1, device=grad.device)
            mask[self.query_ids] = 1.0
            self._row_mask = mask
        return grad * self._row_mask.to(grad.dtype)

    def embedding_param_names(self) -> list[str]:
        """Names of the input-embedding and (if untied) lm_head weights."""
        ids = {id(self.backbone.input_embeddings().weight), id(self.backbone.output_embeddings().weight)}
        return [n for n, p in self.named_parameters(remove_duplicate=True) if id(p) in ids]

    # ---- trainable sets --------------------------------------------------------------------------------------------
    def trainable_parameter_names(self, stage: int | None = None) -> list[str]:
        """Stage 0: the whole VLM; 1: action LoRA + query rows + action expert (less its never-used parameters,
        `ActionExpert.unused_parameter_names`); 2: LoRA experts + scale head + rows."""
        stage = self.config.stage if stage is None else stage
        if stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {stage}")
        if stage == 2 and self.config.stage != 2:
            raise ValueError("stage-2 training needs a stage-2 model (see to_stage2)")
        emb = set(self.embedding_param_names())
        unused = {f"action_expert.{n}" for n in self.action_expert.unused_parameter_names()}
        names = []
        for n, _ in self.named_parameters(remove_duplicate=True):
            if stage == 0:
                ok = n.startswith("backbone.")
            elif stage == 1:
                ok = (((n.startswith("molora.adapters.") or n.startswith("action_expert.")) and n not in unused)
                      or n in emb)
            else:
                ok = n.startswith("molora.") or n in emb
            if ok:
                names.append(n)
        return names

    def set_trainable(self, stage: int | None = None) -> list[str]:
        """Set requires_grad for `stage` (default: the config's); returns the trainable names."""
        stage = self.config.stage if stage is None else stage
        names = set(self.trainable_parameter_names(stage))
        for n, p in self.named_parameters(remove_duplicate=True):
            p.requires_grad_(n in names)
        self._restrict_rows = stage != 0
        return sorted(names)

    def no_decay_param_names(self) -> list[str]:
        """Parameters that must get weight decay 0: embeddings / lm_head (frozen rows), biases and norm weights."""
        emb = set(self.embedding_param_names())
        return [n for n, p in self.named_parameters(remove_duplicate=True) if n in emb or p.ndim < 2]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups over parameters that require grad: decay / no decay (embeddings always 0)."""
        nd = set(self.no_decay_param_names())
        decay, no_decay = [], []
        for n, p in self.named_parameters(remove_duplicate=True):
            if p.requires_grad:
                (no_decay if n in nd else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing on the LLM (non-reentrant, so the router still gets its gradient)."""
        hf = self.backbone.hf
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- training forward ------------------------------------------------------------------------------------------
    def _latents(self, hidden: torch.Tensor, input_ids: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        ids = torch.gather(input_ids, 1, qpos)
        expected = torch.tensor(self.query_ids, device=ids.device).expand_as(ids)
        if not torch.equal(ids, expected):
            raise ValueError(f"missing query tokens: each action sample must hold exactly the {len(self.query_ids)} "
                             "latent query tokens at its query_positions")
        return torch.gather(hidden, 1, qpos[..., None].expand(-1, -1, hidden.shape[-1]))

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """FM + LM loss (weights 1:1) for action rows, LM alone for the others. Returns loss, fm_loss, lm_loss, and
        kp_loss when the action expert has a keypoint readout and the batch carries `keypoints` labels."""
        for key in ("input_ids", "attention_mask", "labels", "pixel_values", "has_action"):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r} (build batches with model.processor)")
        dev = self.device  # a generator on any device works: noise and times are drawn there, then moved
        input_ids = batch["input_ids"].to(dev)
        labels = batch["labels"].to(dev)
        hidden, _ = self.backbone.hidden_states(input_ids, batch["attention_mask"].to(dev), batch["pixel_values"].to(dev))
        # LM: next-token CE at supervised positions only (logits computed only there).
        tgt = labels[:, 1:]
        sel = tgt != IGNORE_INDEX
        if bool(sel.any()):
            logits = self.backbone.logits(hidden[:, :-1][sel])
            lm_loss = F.cross_entropy(logits.float(), tgt[sel])
        else:
            lm_loss = hidden.sum() * 0.0
        has_action = batch["has_action"].to(dev).bool()
        if bool(has_action.any()):
            rows = has_action.nonzero().squeeze(1)
            if "dino_images" not in batch or "actions" not in batch:
                raise KeyError("batch has action rows but no 'dino_images'/'actions' (build it with model.processor)")
            lat = self._latents(hidden[rows], input_ids[rows], batch["query_positions"].to(dev)[rows])
            state = batch["state"].to(dev)[rows] if self.action_expert.cfg.use_state else None
            ae = self.action_expert
            kp = batch.get("keypoints") if ae.cfg.keypoints else None
            objects = batch.get("object_keypoints") if ae.cfg.object_keypoints else None
            terms = ae.loss_terms(
                lat, batch["dino_images"].to(dev)[rows], state, batch["actions"].to(dev)[rows], generator=generator,
                action_is_pad=batch["action_is_pad"].to(dev)[rows] if "action_is_pad" in batch else None,
                # labels are over the whole frame; the expert sees its centre crop, where positions scale by 1/ratio
                keypoints=None if kp is None else kp.to(dev)[rows] / ae.cfg.center_crop_ratio,
                object_keypoints=None if objects is None else objects.to(dev)[rows] / ae.cfg.center_crop_ratio,
            )
            fm_loss = terms["fm"]
        else:
            terms, fm_loss = {}, torch.zeros((), device=dev)
        loss = self.config.fm_weight * fm_loss + self.config.lm_weight * lm_loss
        out = {"loss": loss, "fm_loss": fm_loss, "lm_loss": lm_loss}
        for term, weight, name in _EXPERT_TERMS:  # the expert's extra terms, weighted by its config
            if term in terms:
                out["loss"] = out["loss"] + getattr(self.action_expert.cfg, weight) * terms[term]
                out[name] = terms[term]
        return out

    # ---- inference -----------------------------------------------------------------------------------------------
    def _as_batch(self, images: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a uint8 array (V, H, W, 3) or (B, V, H, W, 3), got {type(images).__name__}")
        if images.ndim == 4:
            return images[None], True
        if images.ndim == 5:
            return images, False
        raise ValueError(f"images must have shape (V, H, W, 3) or (B, V, H, W, 3), got {tuple(images.shape)}")

    @torch.no_grad()
    def _greedy(self, enc: dict[str, Any], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        """Greedy decoding with the LLM's KV cache; returns the new token ids (stop token excluded)."""
        dev = self.device
        ids = enc["input_ids"][None].to(dev)
        hidden, cache = self.backbone.hidden_states(ids, None, enc["pixel_values"][None].to(dev), use_cache=True)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = self.backbone.logits(hidden[:, -1]).argmax(-1)
            tok = int(nxt)
            if tok in stop_ids:
                break
            out.append(tok)
            hidden, cache = self.backbone.hidden_states(nxt[:, None], None, None, cache=cache, use_cache=True)
        return out

    def _stop_ids(self, stop_at_query: bool) -> set[int]:
        stop = {self.processor.im_end}
        if self.tokenizer.eos_token_id is not None:
            stop.add(self.tokenizer.eos_token_id)
        if stop_at_query:
            stop.add(self.query_ids[0])
        return stop

    @torch.no_grad()
    def generate_text(
        self,
        images: Any,
        prompt: str | Sequence[dict],
        max_new_tokens: int = 64,
        stop_at_query: bool = True,
    ) -> str:
        """Greedy chat/VQA answer for one observation. prompt: a user message, or a list of chat turns ending with a
        user turn. Stops at <|im_end|> (and at the first latent query token if stop_at_query)."""
        imgs, single = self._as_batch(images)
        if not single:
            raise ValueError("generate_text takes one observation (V, H, W, 3)")
        conv = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        enc = self.processor.encode({"images": imgs[0], "conversation": conv}, generation_prompt=True)
        toks = self._greedy(enc, max_new_tokens, self._stop_ids(stop_at_query))
        return self.tokenizer.decode(toks, skip_special_tokens=True).strip()

    @torch.no_grad()
    def latents(
        self,
        images: Any,
        instruction: str | Sequence[str],
        replies: Sequence[str | None] | None = None,
        think: bool = False,
        state: Any = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latent action tokens C (B, N, D) and the processed batch, for given (optional) replies."""
        imgs, _ = self._as_batch(images)
        b = imgs.shape[0]
        instrs = [instruction] * b if isinstance(instruction, str) else list(instruction)
        if len(instrs) != b:
            raise ValueError(f"got {len(instrs)} instructions for {b} observations")
        replies = list(replies) if replies is not None else [None] * b
        states = self._states(state, b)
        samples = []
        for i in range(b):
            smp = {"images": imgs[i], "has_action": True, "conversation": [
                {"role": "user", "content": action_prompt(instrs[i], think)},
                {"role": "assistant", "content": replies[i] or ""},
            ]}
            if states is not None:
                smp["state"] = states[i]
            samples.append(smp)
        batch = self.processor(samples, inference=True)
        dev = self.device
        ids = batch["input_ids"].to(dev)
        hidden, _ = self.backbone.hidden_states(ids, batch["attention_mask"].to(dev), batch["pixel_values"].to(dev))
        return self._latents(hidden, ids, batch["query_positions"].to(dev)), batch

    def _states(self, state: Any, b: int) -> np.ndarray | None:
        if state is None:
            if self.action_expert.cfg.use_state:
                raise ValueError("state is required: the model uses proprioceptive state (use_state=True)")
            return None
        st = np.asarray(state, dtype=np.float32)
        if st.ndim == 1:
            st = st[None]
        if st.shape[0] != b:
            raise ValueError(f"state has batch {st.shape[0]}, images have {b}")
        return st

    @torch.no_grad()
    def predict_action(
        self,
        images: Any,
        instruction: str | Sequence[str],
        state: Any = None,
        think: bool = False,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        use_cache: bool = True,
        noise_scale: float = 1.0,
    ) -> tuple[np.ndarray, str | list[str] | None]:
        """Normalised action chunk and the reply text (thinking mode) for one or a batch of observations.

        images: uint8 (V, H, W, 3) or (B, V, H, W, 3); instruction: str or B strs; state: (8,) / (B, 8) normalised.
        think: first generate a reply greedily (<= max_think_tokens, stops at the first query token) to the
        "... First answer my question." prompt, then one forward with reply + queries.
        noise_scale: multiplies the flow's starting noise (1.0 = the method, 0.0 = deterministic; see ActionExpert.sample).
        Returns (chunk (H, 7) or (B, H, 7) float32, reply str / list[str] / None).
        """
        imgs, single = self._as_batch(images)
        b = imgs.shape[0]
        instrs = [instruction] * b if isinstance(instruction, str) else list(instruction)
        replies: list[str] | None = None
        if think:
            replies = []
            stop = self._stop_ids(True)
            for i in range(b):
                conv = [{"role": "user", "content": action_prompt(instrs[i], think=True)}]
                enc = self.processor.encode({"images": imgs[i], "conversation": conv}, generation_prompt=True)
                toks = self._greedy(enc, self.config.max_think_tokens, stop)
                replies.append(self.tokenizer.decode(toks, skip_special_tokens=True).strip())
        lat, batch = self.latents(imgs, instrs, replies, think=think, state=state)
        dev = self.device
        st = batch["state"].to(dev) if self.action_expert.cfg.use_state else None
        noise = None
        if generator is not None:  # draw on the generator's device: same numbers whatever the model's device
            ae = self.action_expert.cfg
            noise = torch.randn((b, ae.chunk_size, ae.action_dim), generator=generator, device=generator.device)
            noise = noise.to(dev)
        chunk = self.action_expert.sample(
            lat, batch["dino_images"].to(dev), st, num_steps=num_steps, use_cache=use_cache, noise=noise,
            noise_scale=noise_scale,
        )
        out = chunk.float().cpu().numpy()
        if single:
            return out[0], (replies[0] if replies is not None else None)
        return out, replies

    # ---- checkpoints -----------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """One directory: config.json, model.safetensors, tokenizer files, normalization.json (if norm_stats set)."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        data = self.config.to_dict()
        data["_format_version"] = FORMAT_VERSION
        data["_backbone_config"] = self.backbone.hf.config.to_dict()
        data["_action_expert_config"] = self.action_expert.cfg.to_dict()
        (path / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))
        save_model(self, str(path / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(path)
        if self.norm_stats is not None:
            (path / NORM_FILE).write_text(json.dumps(self.norm_stats, indent=2))
        elif (path / NORM_FILE).exists():
            (path / NORM_FILE).unlink()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> InstructVLA:
        """Load a directory written by `save_pretrained` (offline)."""
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

        path = Path(path)
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: not an InstructVLA checkpoint directory")
        data = json.loads(cfg_file.read_text())
        version = data.pop("_format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{cfg_file}: unsupported _format_version {version!r} (expected {FORMAT_VERSION})")
        bb = data.pop("_backbone_config")
        ae = ActionExpertConfig.from_dict(data.pop("_action_expert_config"))
        config = InstructVLAConfig.from_dict(data)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        hf_config = AutoConfig.for_model(bb.pop("model_type"), **bb)
        hf = AutoModelForImageTextToText.from_config(hf_config).float()
        model = cls(config, backbone=Backbone(hf, tokenizer), action_expert_config=ae)
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path / WEIGHTS_FILE}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        if (path / NORM_FILE).is_file():
            model.norm_stats = json.loads((path / NORM_FILE).read_text())
        return model.to(device).eval()

    @classmethod
    def to_stage2(cls, source: InstructVLA | str | os.PathLike, **moe: Any) -> InstructVLA:
        """A stage-2 model from a stage-1 one (object or directory): expert 0 = the action LoRA, other experts
        start at zero output and the gate at uniform weights, so outputs equal the source's. `moe` overrides
        MoESettings fields."""
        src = source if isinstance(source, InstructVLA) else cls.from_pretrained(source)
        if src.config.stage != 1:
            raise ValueError(f"to_stage2 needs a stage-1 model, got stage {src.config.stage}")
        moe_cfg = dataclasses.replace(src.config.moe, **moe)
        config = dataclasses.replace(src.config, stage=2, moe=moe_cfg)
        from transformers import AutoModelForImageTextToText

        with torch.device(src.device):  # build directly where the source lives (fast for GPU-sized models)
            hf = AutoModelForImageTextToText.from_config(src.backbone.hf.config)
            new = cls(config, backbone=Backbone(hf, src.tokenizer), action_expert_config=src.action_expert.cfg)
        new.to(device=src.device, dtype=next(src.molora.parameters()).dtype)
        state = {k: v for k, v in src.state_dict().items() if not k.startswith("molora.")}
        missing, unexpected = new.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("molora.")]
        if bad or unexpected:
            raise ValueError(f"to_stage2: state mismatch, missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
        new.molora.load_from_single(src.molora, expert=0)
        new.norm_stats = src.norm_stats
        return new.eval()

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts per part (trainable per current requires_grad)."""
        parts = {"backbone": self.backbone, "molora": self.molora, "action_expert": self.action_expert}
        out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        out["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return out


def known_presets() -> list[str]:
    """Backbone presets `InstructVLA.from_preset` accepts."""
    return sorted(PRESETS)
