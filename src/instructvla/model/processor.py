"""Turn `Sample`s into model tensors: VLM pixels, ChatML token ids with image and latent-query tokens, labels, chunks.

Layout of one sequence (Eagle family; method.md §2.1):
    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<img>{IMG_CONTEXT * n}</img>\\n{text}<|im_end|>\\n
    <|im_start|>assistant\\n{reply + " " if reply}<new_token_0>...<new_token_N-1><|im_end|>\\n
Labels cover every assistant turn's content and its <|im_end|> (queries included). Multi-view samples (primary +
wrist) are concatenated side by side into one image for the VLM (method.md §4.4), squashed to the VLM's square size;
the action expert gets every view separately (its own preprocessing). Only action samples feed the action expert, so
only they must carry exactly `num_views` views (and the state when use_state); text samples (VQA, chat, the
thinking reply) take any number of views and no state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from instructvla.model import tokenizer as tk

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_TOK_CACHE_SIZE = 8192  # memoised tokenisations per processor
POINT_LABEL_KEYS = ("keypoints", "object_keypoints")  # (K, 2) image-point labels an action sample may carry
ACTION_PROMPT = "What action should the robot take to {instr}?"
THINK_PROMPT = "What action should the robot take to {instr}? First answer my question."


def action_prompt(instruction: str, think: bool = False) -> str:
    """The user prompt of method.md §3 (instruction lower-cased, trailing punctuation dropped)."""
    instr = instruction.strip().rstrip(".?!").lower()
    if not instr:
        raise ValueError("instruction is empty")
    return (THINK_PROMPT if think else ACTION_PROMPT).format(instr=instr)


@dataclass
class ProcessorSpec:
    """What the processor needs to know about the model (built by `InstructVLA.processor`)."""

    image_token_ids: list[int]
    vlm_image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    query_ids: list[int]
    num_views: int
    image_size: int
    max_length: int
    chunk_size: int
    action_dim: int
    state_dim: int
    use_state: bool


class VLAProcessor:
    """Sample -> tensors, and collation into a padded batch (right padding)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        spec: ProcessorSpec,
        dino_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.tokenizer = tokenizer
        self.spec = spec
        self.dino_preprocess = dino_preprocess
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        vocab = tokenizer.get_vocab()
        for token in (tk.IM_START, tk.IM_END):
            if token not in vocab:
                raise ValueError(f"tokenizer has no {token!r} token: the processor writes ChatML prompts")
        self.im_start, self.im_end = vocab[tk.IM_START], vocab[tk.IM_END]
        self._tok_cache: dict[str, tuple[int, ...]] = {}
        self._nl = self._tok("\n")
        self._role = {r: [self.im_start] + self._tok(f"{r}\n") for r in ("system", "user", "assistant")}
        self._mean = torch.tensor(spec.image_mean).view(3, 1, 1)
        self._std = torch.tensor(spec.image_std).view(3, 1, 1)

    def _tok(self, text: str) -> list[int]:
        """Token ids of `text` (memoised: training prompts repeat, and tokenising is a fifth of the collate)."""
        if not text:
            return []
        ids = self._tok_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._tok_cache) >= _TOK_CACHE_SIZE:
                self._tok_cache.pop(next(iter(self._tok_cache)))  # oldest first
            self._tok_cache[text] = ids
        return list(ids)

    # ---- images -------------------------------------------------------------------------------------------------
    def check_images(self, images: Any, where: str = "images", any_views: bool = False) -> torch.Tensor:
        """Validate uint8 (V, H, W, 3) views (V = num_views unless any_views); returns a uint8 tensor."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{where} must be a numpy array or tensor (V, H, W, 3) uint8, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TypeError(f"{where} must be uint8 (V, H, W, 3), got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{where} must have shape (V, H, W, 3), got {tuple(images.shape)} (ndim {images.ndim})")
        v, h, w, _ = images.shape
        s = self.spec
        if v < 1:
            raise ValueError(f"{where} has no views (shape {tuple(images.shape)})")
        if v != s.num_views and not any_views:
            raise ValueError(f"{where} has {v} views, the model expects num_views={s.num_views} (action samples feed "
                             "every view to the action expert)")
        if (h, w) != (s.image_size, s.image_size):
            raise ValueError(f"{where} image size is {h}x{w}, the model expects {s.image_size}x{s.image_size} "
                             "(config image_size)")
        return images

    def vlm_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (V, H, W, 3) -> normalised float (3, S, S): views side by side, bicubic squash to the VLM size."""
        x = torch.cat(list(images), dim=1).permute(2, 0, 1)[None].float().div_(255.0)  # (1, 3, H, V*W)
        s = self.spec.vlm_image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        return ((x[0] - self._mean) / self._std).contiguous()

    # ---- text ---------------------------------------------------------------------------------------------------
    def _conversation_ids(self, conversation: Sequence[dict], with_queries: bool, generation_prompt: bool,
                          stop_after_queries: bool) -> tuple[list[int], list[int], int]:
        if not conversation:
            raise ValueError("conversation is empty")
        turns = list(conversation)
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"conversation turn {i} must be a dict with role system|user|assistant, got {turn!r}")
            if not isinstance(turn.get("content", ""), str):
                raise TypeError(f"conversation turn {i} content must be a string")
            if "<new_token_" in turn.get("content", ""):
                raise ValueError(f"conversation turn {i} already contains latent query tokens; the processor adds them")
        if turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": tk.SYSTEM_PROMPT})
        if with_queries and turns[-1]["role"] != "assistant":
            raise ValueError("missing query tokens: an action sample's last turn must be the assistant's "
                             f"(it carries the {len(self.spec.query_ids)} latent query tokens)")
        if not any(t["role"] == "user" for t in turns):
            raise ValueError("conversation has no user turn to carry the image")
        ids: list[int] = []
        labels: list[int] = []
        query_start = -1
        image_done = False
        for i, turn in enumerate(turns):
            role, content = turn["role"], turn.get("content", "")
            head = list(self._role[role])
            if role == "user" and not image_done:
                head += list(self.spec.image_token_ids) + self._nl
                image_done = True
            ids += head
            labels += [IGNORE_INDEX] * len(head)
            if role == "assistant":
                body = self._tok(content.strip() + " ") if (with_queries and content.strip()) else self._tok(content)
                if with_queries and i == len(turns) - 1:
                    query_start = len(ids) + len(body)
                    body = body + list(self.spec.query_ids)
                    if stop_after_queries:
                        ids += body
                        labels += [IGNORE_INDEX] * len(body)
                        break
                body = body + [self.im_end]
                ids += body
                labels += body
            else:
                body = self._tok(content) + [self.im_end]
                ids += body
                labels += [IGNORE_INDEX] * len(body)
            ids += self._nl
            labels += [IGNORE_INDEX] * len(self._nl)
        if generation_prompt:
            ids += self._role["assistant"]
            labels += [IGNORE_INDEX] * len(self._role["assistant"])
        return ids, labels, query_start

    # ---- samples ------------------------------------------------------------------------------------------------
    def encode(self, sample: dict, inference: bool = False, generation_prompt: bool = False) -> dict[str, Any]:
        """One `Sample` -> unbatched tensors. inference=True stops the sequence after the query tokens.

        Action samples (has_action, not generation_prompt) need num_views views and, when use_state, the state;
        text samples take any number of views and no state (the action expert does not run on them).
        """
        if "images" not in sample or sample["images"] is None:
            raise ValueError("sample has no 'images' (V, H, W, 3) uint8")
        has_action = bool(sample.get("has_action", False))
        expert = has_action and not generation_prompt
        images = self.check_images(sample["images"], "sample['images']", any_views=not expert)
        ids, labels, qstart = self._conversation_ids(
            sample.get("conversation", []), with_queries=has_action and not generation_prompt,
            generation_prompt=generation_prompt, stop_after_queries=inference,
        )
        n_q = len(self.spec.query_ids)
        if len(ids) > self.spec.max_length:
            if has_action:
                raise ValueError(f"missing query tokens: the sample needs {len(ids)} tokens > max_length "
                                 f"{self.spec.max_length}, so its {n_q} latent query tokens would be truncated")
            img_end = ids.index(self.spec.image_token_ids[-1]) + 1 if self.spec.image_token_ids else 0
            if img_end > self.spec.max_length:
                raise ValueError(f"max_length {self.spec.max_length} cannot hold the image tokens ({img_end})")
            ids, labels = ids[: self.spec.max_length], labels[: self.spec.max_length]
        out: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": self.vlm_pixels(images),
            "images": images,
            "has_action": has_action,
            "query_positions": torch.arange(qstart, qstart + n_q) if qstart >= 0 else None,
        }
        s = self.spec
        state = sample.get("state")
        if state is not None:
            st = torch.as_tensor(np.asarray(state, dtype=np.float32))
            if st.shape != (s.state_dim,):
                raise ValueError(f"state must have shape ({s.state_dim},), got {tuple(st.shape)}")
            if not torch.isfinite(st).all():
                raise ValueError("state contains NaN or Inf")
            out["state"] = st
        elif s.use_state and expert:
            raise ValueError("state is missing but the model uses proprioceptive state (use_state=True)")
        if has_action and not inference:
            if sample.get("actions") is None:
                raise ValueError("an action sample (has_action=True) has no 'actions'")
            act = torch.as_tensor(np.asarray(sample["actions"], dtype=np.float32))
            if act.shape != (s.chunk_size, s.action_dim):
                raise ValueError(f"actions must have shape ({s.chunk_size}, {s.action_dim}), got {tuple(act.shape)}")
            if not torch.isfinite(act).all():
                raise ValueError("actions contain NaN or Inf")
            pad = sample.get("action_is_pad")
            pad_t = torch.zeros(s.chunk_size, dtype=torch.bool) if pad is None else torch.as_tensor(np.asarray(pad, dtype=bool))
            if pad_t.shape != (s.chunk_size,):
                raise ValueError(f"action_is_pad must have shape ({s.chunk_size},), got {tuple(pad_t.shape)}")
            out["actions"], out["action_is_pad"] = act, pad_t
            for key in POINT_LABEL_KEYS:
                if sample.get(key) is not None:
                    kp = torch.as_tensor(np.asarray(sample[key], dtype=np.float32))
                    if kp.ndim != 2 or kp.shape[-1] != 2:
                        raise ValueError(f"{key} must have shape (K, 2), got {tuple(kp.shape)}")
                    if torch.isinf(kp).any():
                        raise ValueError(f"{key} contain Inf (NaN marks an unlabelled point)")
                    out[key] = kp
        return out

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad (right) and stack encoded samples into a batch dict for `InstructVLA.forward`."""
        if not items:
            raise ValueError("cannot collate an empty list of samples")
        s = self.spec
        b = len(items)
        t = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((b, t), dtype=torch.long)
        n_q = len(s.query_ids)
        qpos = torch.zeros((b, n_q), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[i, :n] = it["input_ids"]
            labels[i, :n] = it["labels"]
            attn[i, :n] = 1
            if it["query_positions"] is not None:
                qpos[i] = it["query_positions"]
        has_action = torch.tensor([bool(it["has_action"]) for it in items])
        batch: dict[str, torch.Tensor] = {
            "input_ids": input_ids, "attention_mask": attn, "labels": labels,
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "query_positions": qpos, "has_action": has_action,
        }
        rows = has_action.nonzero().squeeze(1).tolist()
        if self.dino_preprocess is not None and rows:
            # Only action rows feed the action expert; text rows (any view count) get zeros, row-aligned.
            dino = self.dino_preprocess(torch.stack([items[i]["images"] for i in rows]))
            full = dino.new_zeros((b, *dino.shape[1:]))
            full[rows] = dino
            batch["dino_images"] = full
        if any("state" in it for it in items):
            missing = [i for i in rows if "state" not in items[i]]
            if missing:
                raise ValueError("some samples in the batch have 'state' and some do not (every action sample needs "
                                 f"one; missing at rows {missing})")
            state = torch.zeros((b, s.state_dim))
            for i, it in enumerate(items):
                if "state" in it:
                    state[i] = it["state"]
            batch["state"] = state
        if any("actions" in it for it in items):
            actions = torch.zeros((b, s.chunk_size, s.action_dim))
            pad = torch.ones((b, s.chunk_size), dtype=torch.bool)
            for i, it in enumerate(items):
                if "actions" in it:
                    actions[i], pad[i] = it["actions"], it["action_is_pad"]
            batch["actions"], batch["action_is_pad"] = actions, pad
        for key in POINT_LABEL_KEYS:
            labelled = [i for i, it in enumerate(items) if key in it]
            if labelled:
                missing = [i for i in rows if key not in items[i]]
                shapes = {tuple(items[i][key].shape) for i in labelled}
                if missing or len(shapes) > 1:
                    raise ValueError(f"{key} labels must come with every action sample of a batch, all of one "
                                     f"shape; missing at rows {missing}, shapes {sorted(shapes)}")
                kps = torch.zeros((b, *shapes.pop()))
                for i in labelled:
                    kps[i] = items[i][key]
                batch[key] = kps
        return batch

    def __call__(self, samples: Sequence[dict], inference: bool = False) -> dict[str, torch.Tensor]:
        """Encode and collate a list of `Sample`s."""
        return self.collate([self.encode(smp, inference=inference) for smp in samples])
