"""`Policy`: the one inference entry point (`infer(obs) -> dict`) shared by the server, the evaluator and chat.

A `Policy` wraps a loaded `InstructVLA` model with its normalisation stats and holds one episode's state: the
flow-matching noise generator, the adaptive-ensemble buffer, the cached reasoning reply and cached VLM latents.
`spawn()` gives another episode state over the same model (the server makes one per connection); model calls are
serialised by a lock shared between spawned policies.

Observation keys (openpi names): ``observation/image`` (H, W, 3) uint8, ``observation/wrist_image`` (required to
act with a two-camera model, optional in chat mode), ``observation/state`` (8,) unnormalised (required to act with a
state-using model), ``prompt``, optional ``options`` (see `serve.protocol.OPTION_DOC`).
Reply: ``actions`` (chunk, 7) float32 unnormalised, ``text`` (the reply when thinking / the answer in chat mode,
else ""), ``server_timing`` (milliseconds). With the ensemble on, ``actions[0]`` is the ensembled action to execute
now and ``raw_actions`` holds the newest chunk as predicted. A model whose action expert has a keypoint readout also
replies ``keypoints`` (K, 2) float32: where it locates the instructed object, its destination and the gripper in the
primary camera frame, (u, v) in [-1, 1] with v down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from instructvla.data import normalize as norm
from instructvla.eval.ensemble import AdaptiveEnsemble
from instructvla.model.processor import action_prompt
from instructvla.serve.protocol import OPTION_DOC, ProtocolError, Request, RequestSpec, validate_request

logger = logging.getLogger(__name__)

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STATE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper")


@dataclass
class PolicyConfig:
    """Inference settings (not saved with the model).

    think:              default thinking mode for requests that do not say (options.think).
    reasoning_every:    thinking: regenerate the cached reply at step 0 and every N steps (method: 20).
    max_reply_tokens:   thinking reply budget (None = the model config's max_think_tokens, method: 50).
    chat_max_new_tokens: default answer budget in chat mode.
    ensemble:           apply the adaptive ensemble server-side (actions[0] = ensembled action).
    ensemble_horizon / ensemble_alpha: K chunks kept and alpha (method: K = 2 / 7 / 8, alpha 0.1).
    latent_cache_every: recompute the VLM latents every N act steps, reusing them in between (1 = always recompute;
                        method: 2 keeps performance, 5 degrades).
    center_crop_area:   fraction of the image area kept by a center crop before resizing (1.0 = none; method's
                        test-time crop for crop-augmented training is 0.9). None: the model's own
                        (`InstructVLAConfig.center_crop_area`, set by training to match its augmentation).
    noise_scale:        multiplies the flow-matching starting noise (1.0 = the method; 0.0 = deterministic chunks, the
                        steadier choice for briefly trained policies, see ActionExpert.sample).
    seed:               flow-matching noise seed; every episode restarts from it (reproducible episodes).
    device:             torch device for the model.
    """

    think: bool = False
    reasoning_every: int = 20
    max_reply_tokens: int | None = None
    chat_max_new_tokens: int = 128
    ensemble: bool = False
    ensemble_horizon: int = 8
    ensemble_alpha: float = 0.1
    latent_cache_every: int = 1
    center_crop_area: float | None = None
    noise_scale: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.reasoning_every < 1:
            raise ValueError(f"PolicyConfig.reasoning_every must be >= 1, got {self.reasoning_every}")
        if self.max_reply_tokens is not None and self.max_reply_tokens < 1:
            raise ValueError(f"PolicyConfig.max_reply_tokens must be >= 1, got {self.max_reply_tokens}")
        if self.chat_max_new_tokens < 1:
            raise ValueError(f"PolicyConfig.chat_max_new_tokens must be >= 1, got {self.chat_max_new_tokens}")
        if self.ensemble_horizon < 1:
            raise ValueError(f"PolicyConfig.ensemble_horizon must be >= 1, got {self.ensemble_horizon}")
        if not math.isfinite(self.ensemble_alpha):
            raise ValueError(f"PolicyConfig.ensemble_alpha must be finite, got {self.ensemble_alpha}")
        if self.latent_cache_every < 1:
            raise ValueError(f"PolicyConfig.latent_cache_every must be >= 1, got {self.latent_cache_every}")
        if self.center_crop_area is not None and not 0.0 < self.center_crop_area <= 1.0:
            raise ValueError(f"PolicyConfig.center_crop_area must be in (0, 1], got {self.center_crop_area}")
        if not math.isfinite(self.noise_scale) or self.noise_scale < 0:
            raise ValueError(f"PolicyConfig.noise_scale must be a finite number >= 0, got {self.noise_scale}")


def identity_stats(action_dim: int = 7, state_dim: int = 8) -> dict:
    """Explicit q01 = -1 / q99 = +1 bounds: normalisation is the identity on [-1, 1] (gripper not normalised).

    Used only by `Policy.random_tiny` (a random model trained on nothing has no dataset stats); the metadata frame
    and `Policy.norm_stats` show these bounds, so nothing pretends they came from data.
    """
    mask = [True] * (action_dim - 1) + [False]
    return {
        "action": {"q01": [-1.0] * action_dim, "q99": [1.0] * action_dim, "mask": mask},
        "state": {"q01": [-1.0] * state_dim, "q99": [1.0] * state_dim, "mask": [True] * state_dim},
    }


class _Episode:
    """Per-episode state of one policy session."""

    def __init__(self, cfg: PolicyConfig, device: torch.device) -> None:
        self.step = 0  # act steps taken this episode
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.ensemble = AdaptiveEnsemble(cfg.ensemble_horizon, cfg.ensemble_alpha) if cfg.ensemble else None
        self.reply: str | None = None  # cached reasoning reply
        self.reply_key: tuple | None = None  # (prompt,) the reply was generated for
        self.reply_step = 0
        self.latents: Any = None  # cached VLM latents
        self.latent_key: tuple | None = None
        self.latent_step = 0


class Policy:
    """Inference wrapper: validation, image resizing, normalisation, think/chat modes, per-episode state."""

    def __init__(self, model: Any, config: PolicyConfig | None = None, name: str = "instructvla",
                 source: str | None = None) -> None:
        self.model = model
        self.config = config or PolicyConfig()
        self.name = name
        self.source = source
        self._lock = threading.Lock()
        self._info = _spec_from_model(model)
        stats = getattr(model, "norm_stats", None) or None
        if stats is not None:
            try:
                norm.validate_stats(stats, self._info["action_dim"],
                                    self._info["state_dim"] if self._info["use_state"] else None)
            except (KeyError, ValueError) as e:
                raise ValueError(f"normalisation stats of {source or 'the model'} are unusable: {e}") from e
        # Without stats (e.g. a stage-0 VLM) the policy can chat but not act: `_act` says so per request.
        self.norm_stats = stats
        if self._info["num_views"] > 2:
            raise ValueError(f"the model expects {self._info['num_views']} views; the policy serves at most 2 cameras")
        self._spec = RequestSpec(
            wrist_camera=self._info["num_views"] > 1,
            state_dim=self._info["state_dim"] if self._info["use_state"] else None,
        )
        self._device = torch.device(model.device) if hasattr(model, "device") else torch.device("cpu")
        self._episode = _Episode(self.config, self._device)

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: PolicyConfig | None = None) -> Policy:
        """Load a checkpoint directory written by `InstructVLA.save_pretrained`."""
        from instructvla.model.vla import InstructVLA

        config = config or PolicyConfig()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"policy checkpoint directory {str(path)!r} does not exist")
        model = InstructVLA.from_pretrained(path).to(config.device).eval()
        return cls(model, config, name=os.path.basename(os.path.normpath(path)), source=str(path))

    @classmethod
    def random_tiny(cls, config: PolicyConfig | None = None, seed: int = 0) -> Policy:
        """A randomly initialised tiny policy with explicit identity stats (`identity_stats`): smoke tests only."""
        from instructvla.model.vla import InstructVLA

        config = config or PolicyConfig()
        model = InstructVLA.from_preset("tiny", seed=seed).to(config.device).eval()
        info = _spec_from_model(model)
        model.norm_stats = identity_stats(info["action_dim"], info["state_dim"])
        return cls(model, config, name="random-tiny", source="random-tiny (identity stats q01=-1, q99=1)")

    def spawn(self) -> Policy:
        """A new policy sharing this one's model, stats and lock, with its own fresh episode state."""
        other = object.__new__(Policy)
        other.__dict__.update(self.__dict__)
        other._episode = _Episode(self.config, self._device)
        return other

    def reset(self) -> None:
        """Start a new episode (ensemble buffer, cached reply and latents cleared, noise seed restarted)."""
        self._episode = _Episode(self.config, self._device)

    # ----------------------------------------------------------------------------------------------------- info
    @property
    def request_spec(self) -> RequestSpec:
        return self._spec

    @property
    def chunk_size(self) -> int:
        return int(self._info["chunk_size"])

    def metadata(self) -> dict:
        """What the server sends first: model, action space, chunk size, cameras, stats, defaults."""
        info = self._info
        cfg = self.config
        return {
            "model": self.name,
            "source": self.source,
            "action_space": {
                "dim": info["action_dim"],
                "names": list(ACTION_NAMES[: info["action_dim"]]),
                "type": "end-effector delta (xyz, roll-pitch-yaw, gripper), unnormalised",
            },
            "chunk_size": info["chunk_size"],
            "cameras": list(self._spec.cameras),
            "image_size": info["image_size"],
            "state": (
                {"dim": info["state_dim"], "names": list(STATE_NAMES[: info["state_dim"]])}
                if info["use_state"] else None
            ),
            "stats": None if self.norm_stats is None else _jsonable_stats(self.norm_stats),
            "think_default": cfg.think,
            "reasoning_every": cfg.reasoning_every,
            "ensemble": {"enabled": cfg.ensemble, "horizon": cfg.ensemble_horizon, "alpha": cfg.ensemble_alpha},
            "latent_cache_every": cfg.latent_cache_every,
            "center_crop_area": self.crop_area,
            "noise_scale": cfg.noise_scale,
            "modes": ["act", "chat"] if self.norm_stats is not None else ["chat"],
            "options": dict(OPTION_DOC),
        }

    # ------------------------------------------------------------------------------------------------- inference
    @property
    def crop_area(self) -> float:
        """The test-time centre crop in use: the config's, else the model's own."""
        if self.config.center_crop_area is not None:
            return float(self.config.center_crop_area)
        return float(self.model.config.center_crop_area)

    def parse(self, obs: Any) -> Request:
        """Validate an observation dict; raises `ProtocolError` (a ValueError) naming the problem."""
        return validate_request(obs, self._spec)

    def infer(self, obs: dict) -> dict:
        """Observation dict -> reply dict (see the module docstring)."""
        return self.infer_request(self.parse(obs))

    def infer_request(self, request: Request) -> dict:
        """Run an already validated request."""
        t0 = time.perf_counter()
        images = self._prepare_images(request)
        t_prep = time.perf_counter()
        with self._lock:
            t_locked = time.perf_counter()
            if request.options.reset:
                self.reset()
            try:
                out = self._chat(images, request) if request.options.mode == "chat" else self._act(images, request)
            except ProtocolError:
                raise
            except ValueError as e:  # the model validates its inputs (e.g. a prompt too long for max_length)
                raise ProtocolError(f"the model rejected the request: {e}") from e
        t1 = time.perf_counter()
        out["server_timing"] = {
            "infer_ms": (t1 - t0) * 1e3,
            "preprocess_ms": (t_prep - t0) * 1e3,
            "lock_wait_ms": (t_locked - t_prep) * 1e3,
            "model_ms": (t1 - t_locked) * 1e3,
        }
        return out

    # --------------------------------------------------------------------------------------------------- helpers
    def _prepare_images(self, request: Request) -> np.ndarray:
        """Center-crop (optional) and resize every view to the model's square size -> (V, S, S, 3) uint8."""
        views = [request.image]
        if self._info["num_views"] > 1 and request.wrist_image is not None:
            views.append(request.wrist_image)
        size = int(self._info["image_size"])
        return np.stack([_resize(v, size, self.crop_area) for v in views])

    def _normalized_state(self, request: Request) -> np.ndarray | None:
        if request.state is None:
            return None
        return np.asarray(norm.normalize(request.state, self.norm_stats, "state"), dtype=np.float32)

    def _act(self, images: np.ndarray, request: Request) -> dict:
        if self.norm_stats is None:
            raise ProtocolError(
                f"model {self.name!r} has no normalisation stats (normalization.json), so it cannot unnormalise "
                "actions; it only answers mode='chat' requests (train stage 1 to get an acting policy)"
            )
        ep, cfg = self._episode, self.config
        think = cfg.think if request.options.think is None else request.options.think
        state = self._normalized_state(request)
        reply: str | None = None
        if think:
            # method.md §6: the reply is regenerated at step 0 and every `reasoning_every` steps, cached otherwise.
            key = (request.prompt,)
            if ep.reply is None or ep.reply_key != key or ep.step - ep.reply_step >= cfg.reasoning_every:
                budget = request.options.max_new_tokens or cfg.max_reply_tokens or self.model.config.max_think_tokens
                ep.reply = self.model.generate_text(
                    images, action_prompt(request.prompt, think=True), max_new_tokens=budget, stop_at_query=True
                )
                ep.reply_key, ep.reply_step = key, ep.step
                ep.latents = None  # the latents depend on the reply
            reply = ep.reply
        chunk, keypoints = self._predict(images, request.prompt, state, reply, think)
        actions = np.asarray(norm.unnormalize(chunk, self.norm_stats, "action"), dtype=np.float32)
        out: dict[str, Any] = {"actions": actions, "text": reply or ""}
        if keypoints is not None:
            out["keypoints"] = keypoints
        if ep.ensemble is not None:
            out["raw_actions"] = actions.copy()
            actions[0] = ep.ensemble.add(actions)
        ep.step += 1
        return out

    @torch.no_grad()
    def _predict(self, images: np.ndarray, prompt: str, state: np.ndarray | None, reply: str | None,
                 think: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One normalised chunk, and the (K, 2) keypoints over the full camera frame when the action expert has a
        keypoint readout (else None); the VLM latents are recomputed or reused per `latent_cache_every`."""
        ep, cfg, m = self._episode, self.config, self.model
        replies = [reply] if think else None
        key = (prompt, reply, think)
        fresh = (cfg.latent_cache_every == 1 or ep.latents is None or ep.latent_key != key
                 or ep.step - ep.latent_step >= cfg.latent_cache_every)
        if fresh:
            latents, batch = m.latents(images, prompt, replies, think=think, state=state)
            if cfg.latent_cache_every > 1:
                ep.latents, ep.latent_key, ep.latent_step = latents, key, ep.step
        else:
            # reuse the cached latents; only the action expert's inputs (images, state) are processed anew
            latents = ep.latents
            sample: dict[str, Any] = {"images": images, "has_action": True, "conversation": [
                {"role": "user", "content": action_prompt(prompt, think)},
                {"role": "assistant", "content": reply or ""},
            ]}
            if state is not None:
                sample["state"] = state
            batch = m.processor([sample], inference=True)
        dev = m.device
        st = batch["state"].to(dev) if self._info["use_state"] else None
        ae, dino = m.action_expert, batch["dino_images"].to(dev)
        prefix = ae.encode_prefix(latents, dino, st)  # once: the flow samples from it and it holds the keypoints
        chunk = ae.sample(latents, dino, st, generator=ep.generator, noise_scale=cfg.noise_scale, prefix=prefix)
        chunk = _to_numpy(chunk)[0]
        expected = (self._info["chunk_size"], self._info["action_dim"])
        if chunk.shape != expected:
            raise RuntimeError(f"model returned an action chunk of shape {chunk.shape}, expected {expected}")
        keypoints = None
        if prefix.keypoints is not None:  # back to full-frame coordinates: undo the expert's and this policy's crops
            scale = ae.cfg.center_crop_ratio * math.sqrt(self.crop_area)
            keypoints = (_to_numpy(prefix.keypoints)[0] * scale).astype(np.float32)
        return chunk, keypoints

    def _chat(self, images: np.ndarray, request: Request) -> dict:
        budget = request.options.max_new_tokens or self.config.chat_max_new_tokens
        answer = self.model.generate_text(images, request.prompt, max_new_tokens=budget)
        return {"text": answer}


# ------------------------------------------------------------------------------------------------------- functions
def _spec_from_model(model: Any) -> dict:
    """Read what inference needs (views, image size, chunk, dims, state use) from the model's processor spec."""
    spec = model.processor.spec
    return {
        "num_views": int(spec.num_views),
        "image_size": int(spec.image_size),
        "chunk_size": int(spec.chunk_size),
        "action_dim": int(spec.action_dim),
        "state_dim": int(spec.state_dim),
        "use_state": bool(spec.use_state),
    }


def _resize(image: np.ndarray, size: int, crop_area: float) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: optional centered crop keeping `crop_area` of the area, bilinear."""
    h, w = image.shape[:2]
    if crop_area < 1.0:
        side = math.sqrt(crop_area)
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[top : top + ch, left : left + cw]
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _jsonable_stats(stats: dict) -> dict:
    """Stats as plain lists (msgpack- and JSON-friendly)."""
    return json.loads(json.dumps(stats, default=lambda o: np.asarray(o).tolist()))
