"""Policy: the one inference entry point (validation, resizing, normalisation, think/chat, episode state)."""

import json

import numpy as np
import pytest
import torch

from instructvla.data import normalize as norm
from instructvla.model.config import InstructVLAConfig
from instructvla.model.vla import InstructVLA
from instructvla.policy import Policy, PolicyConfig, identity_stats
from instructvla.serve.protocol import ProtocolError

PROMPT = "pick up the red cube"


@pytest.fixture(scope="module")
def tiny():
    return Policy.random_tiny()


def _obs(rng, size=(48, 64), **extra):
    return {"observation/image": rng.integers(0, 256, (*size, 3), dtype=np.uint8), "prompt": PROMPT, **extra}


def test_reply_shapes_and_metadata(tiny):
    out = tiny.spawn().infer(_obs(np.random.default_rng(0)))
    assert out["actions"].shape == (16, 7) and out["actions"].dtype == np.float32
    assert out["text"] == ""
    assert {"infer_ms", "model_ms", "preprocess_ms", "lock_wait_ms"} <= set(out["server_timing"])
    meta = tiny.metadata()
    assert meta["chunk_size"] == 16 and meta["action_space"]["dim"] == 7
    assert meta["cameras"] == ["observation/image"] and meta["state"] is None
    assert meta["stats"]["action"]["q01"] == [-1.0] * 7  # explicit identity bounds of the random policy
    json.dumps(meta)  # plain data


def test_matches_model_predict_action_and_unnormalises(tiny):
    """Same seed -> the policy's chunk is the model's own predict_action chunk, unnormalised with the stats."""
    rng = np.random.default_rng(1)
    obs = _obs(rng, size=(224, 224))
    pol = tiny.spawn()
    got = pol.infer(obs)["actions"]
    ref, _ = tiny.model.predict_action(obs["observation/image"][None], PROMPT,
                                       generator=torch.Generator().manual_seed(pol.config.seed))
    np.testing.assert_allclose(got, norm.unnormalize(ref, tiny.norm_stats, "action"), atol=1e-6)
    assert set(np.unique(got[:, 6])) <= {0.0, 1.0}  # gripper binarised by unnormalize


def test_noise_scale_reaches_the_flow_sampler(tiny):
    """noise_scale=0: the deterministic chunk of predict_action(noise_scale=0), whatever the noise seed."""
    import dataclasses

    obs = _obs(np.random.default_rng(3), size=(224, 224))
    pol = tiny.spawn()
    pol.config = dataclasses.replace(pol.config, noise_scale=0.0, seed=5)
    got = pol.infer(obs)["actions"]
    ref, _ = tiny.model.predict_action(obs["observation/image"][None], PROMPT, noise_scale=0.0,
                                       generator=torch.Generator().manual_seed(123))
    np.testing.assert_allclose(got, norm.unnormalize(ref, tiny.norm_stats, "action"), atol=1e-6)
    assert pol.metadata()["noise_scale"] == 0.0


def test_episode_reset_reproduces_and_sessions_are_independent(tiny):
    rng = np.random.default_rng(2)
    obs_seq = [_obs(rng) for _ in range(3)]
    a = tiny.spawn()
    first = [a.infer(o)["actions"] for o in obs_seq]
    a.reset()
    again = [a.infer(o)["actions"] for o in obs_seq]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    # a second session interleaved with a fresh one does not disturb it
    b, c = tiny.spawn(), tiny.spawn()
    for i, o in enumerate(obs_seq):
        np.testing.assert_array_equal(b.infer(o)["actions"], first[i])
        c.infer(_obs(rng))
    # the reset option does the same over the wire
    out = b.infer({**obs_seq[0], "options": {"reset": True}})
    np.testing.assert_array_equal(out["actions"], first[0])


def test_think_caches_reply_and_matches_model(tiny):
    rng = np.random.default_rng(3)
    pol = tiny.spawn()
    pol.config = PolicyConfig(think=True, reasoning_every=3)
    pol.reset()
    calls = []
    orig = tiny.model.generate_text

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    tiny.model.generate_text = counting
    try:
        obs0 = _obs(rng, size=(224, 224))
        out = pol.infer(obs0)
        for _ in range(4):
            pol.infer(_obs(rng))
    finally:
        tiny.model.generate_text = orig
    assert len(calls) == 2  # steps 0 and 3
    ref_chunk, ref_reply = tiny.model.predict_action(obs0["observation/image"][None], PROMPT, think=True,
                                                     generator=torch.Generator().manual_seed(0))
    assert out["text"] == ref_reply
    np.testing.assert_allclose(out["actions"], norm.unnormalize(ref_chunk, tiny.norm_stats, "action"), atol=1e-6)


def test_chat_mode_returns_text_and_keeps_episode(tiny):
    rng = np.random.default_rng(4)
    pol = tiny.spawn()
    out = pol.infer(_obs(rng, options={"mode": "chat", "max_new_tokens": 4}))
    assert set(out) == {"text", "server_timing"} and isinstance(out["text"], str)
    assert pol._episode.step == 0


def test_ensemble_and_latent_cache(tiny):
    rng = np.random.default_rng(5)
    obs_seq = [_obs(rng) for _ in range(4)]
    plain = tiny.spawn()
    raw = [plain.infer(o)["actions"] for o in obs_seq]
    ens = Policy(tiny.model, PolicyConfig(ensemble=True, ensemble_horizon=2))
    outs = [ens.infer(o) for o in obs_seq]
    np.testing.assert_array_equal(outs[0]["actions"], raw[0])  # one chunk: ensemble = its first action
    for o, r in zip(outs, raw):
        np.testing.assert_array_equal(o["raw_actions"], r)
        np.testing.assert_array_equal(o["actions"][1:], r[1:])
    # with K=2, step 3 mixes chunk 3 entry 0 and chunk 2 entry 1
    assert np.all(np.minimum(raw[3][0], raw[2][1]) - 1e-6 <= outs[3]["actions"][0])
    assert np.all(outs[3]["actions"][0] <= np.maximum(raw[3][0], raw[2][1]) + 1e-6)

    cached = Policy(tiny.model, PolicyConfig(latent_cache_every=2))
    calls = []
    orig = tiny.model.latents

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    tiny.model.latents = counting
    try:
        got = [cached.infer(o)["actions"] for o in obs_seq]
    finally:
        tiny.model.latents = orig
    assert len(calls) == 2  # steps 0 and 2 run the VLM; 1 and 3 reuse its latents
    np.testing.assert_array_equal(got[0], raw[0])


def test_bad_requests_raise_protocol_errors(tiny):
    rng = np.random.default_rng(6)
    with pytest.raises(ProtocolError, match="uint8"):
        tiny.infer(_obs(rng) | {"observation/image": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(ProtocolError, match="takes no proprio state"):
        tiny.infer(_obs(rng, **{"observation/state": np.zeros(8, np.float32)}))
    with pytest.raises(ProtocolError, match="model rejected"):
        tiny.infer(_obs(rng, prompt="word " * 700))  # longer than the model's max_length


def test_checkpoint_roundtrip_state_and_wrist(tmp_path):
    model = InstructVLA.from_preset("tiny", action_expert_overrides={"use_state": True, "num_views": 2})
    model.norm_stats = {
        "action": {"q01": [-0.1] * 6 + [0.0], "q99": [0.1] * 6 + [1.0], "mask": [True] * 6 + [False]},
        "state": {"q01": [-1.0] * 8, "q99": [2.0] * 8, "mask": [True] * 8},
    }
    model.save_pretrained(tmp_path / "ckpt")
    pol = Policy.from_pretrained(tmp_path / "ckpt")
    assert pol.metadata()["cameras"] == ["observation/image", "observation/wrist_image"]
    rng = np.random.default_rng(7)
    obs = _obs(rng, **{"observation/wrist_image": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
                       "observation/state": np.linspace(-1, 2, 8).astype(np.float32)})
    out = pol.infer(obs)
    assert out["actions"].shape == (16, 7)
    assert np.all(np.abs(out["actions"][:, :6]) <= 0.1 + 1e-6)  # unnormalised into the stats' range
    fresh = Policy(model)
    np.testing.assert_array_equal(fresh.infer(obs)["actions"], out["actions"])
    with pytest.raises(ProtocolError, match="wrist_image"):
        pol.infer({k: v for k, v in obs.items() if k != "observation/wrist_image"})
    # chat runs only the VLM: the scene image alone, no state, is enough for a two-camera, state-using model
    chat = {"observation/image": obs["observation/image"], "prompt": "What is on the table?",
            "options": {"mode": "chat", "max_new_tokens": 3}}
    assert isinstance(pol.infer(chat)["text"], str)
    assert isinstance(pol.infer({**chat, "observation/wrist_image": obs["observation/wrist_image"]})["text"], str)
    # acting with thinking generates its reply without the state too, then acts with it
    assert pol.infer({**obs, "options": {"think": True, "max_new_tokens": 3}})["actions"].shape == (16, 7)
    with pytest.raises(ProtocolError, match="observation/state"):
        pol.infer({k: v for k, v in obs.items() if k != "observation/state"})
    # a checkpoint without normalization.json (a stage-0 VLM) loads for chat only; acting names the missing file
    (tmp_path / "ckpt" / "normalization.json").unlink()
    chat_only = Policy.from_pretrained(tmp_path / "ckpt")
    assert chat_only.metadata()["modes"] == ["chat"] and chat_only.metadata()["stats"] is None
    with pytest.raises(ProtocolError, match="normalization.json"):
        chat_only.infer(obs)


def test_identity_stats_and_config_validation():
    st = identity_stats()
    x = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(norm.normalize(x, st, "action")[:6], x[:6], atol=1e-6)
    with pytest.raises(ValueError, match="reasoning_every"):
        PolicyConfig(reasoning_every=0)
    with pytest.raises(ValueError, match="center_crop_area"):
        PolicyConfig(center_crop_area=0.0)
    with pytest.raises(ValueError, match="center_crop_area"):
        InstructVLAConfig(center_crop_area=1.5)
    with pytest.raises(ValueError, match="noise_scale"):
        PolicyConfig(noise_scale=-1.0)
