"""Typed boundary objects shared by data, model, training, evaluation and serving.

Shapes are written in the annotations' comments. Every module that crosses a package boundary speaks these.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import numpy as np

# Normalised action chunk: (chunk=16, 7) float32 in [-1, 1] for dims 0-5, gripper in {0,1}-ish (not normalised).
ACTION_DIM = 7
STATE_DIM = 8
DEFAULT_CHUNK = 16
DEFAULT_NUM_QUERIES = 64


class Turn(TypedDict):
    """One chat turn. The image placeholder is implicit: images go before the first user turn's text."""

    role: Literal["system", "user", "assistant"]
    content: str


class Sample(TypedDict, total=False):
    """One training / inference sample, before tokenisation (produced by `instructvla.data`).

    images:        (V, H, W, 3) uint8, V views (primary first, then wrist); H = W = 224 by default.
    conversation:  chat turns; for an action sample the LAST turn is the assistant's and the model processor appends
                   " " + the N latent query tokens to it (content may be "" for a plain action prompt).
    has_action:    True for robot samples (FM + LM loss), False for multimodal / text-only samples (LM loss only).
    actions:       (chunk, 7) float32, normalised (q01/q99), present iff has_action.
    action_is_pad: (chunk,) bool, True past the episode end.
    state:         (8,) float32 normalised proprio, optional.
    keypoints:     (K, 2) float32 image positions in [-1, 1] (u right, v down) of the instructed object, its
                   destination and the gripper in the primary view, optional (datasets with observation.keypoints).
    prompt_type:   "action" | "motion" | "caption_qa" | "context" | "rewrite" | "vqa" | "caption" ... (for logging).
    """

    images: np.ndarray
    conversation: list[Turn]
    has_action: bool
    actions: np.ndarray
    action_is_pad: np.ndarray
    state: np.ndarray
    keypoints: np.ndarray
    prompt_type: str


class Observation(TypedDict, total=False):
    """What a policy receives each control step (openpi key names, so the server passes it through unchanged).

    observation/image:       (H, W, 3) uint8 primary (third-person) camera.
    observation/wrist_image: (H, W, 3) uint8 wrist camera, optional.
    observation/state:       (8,) float proprio (xyz, quaternion xyzw, gripper), unnormalised, optional.
    prompt:                  the instruction (or the question in chat mode).
    """


class PolicyOutput(TypedDict, total=False):
    """What `Policy.infer` returns. actions: (chunk, 7) float32, unnormalised (env units)."""

    actions: np.ndarray
    text: str
    server_timing: dict
