"""Tests for the action expert: config, shapes, prefix caching, FiLM, determinism, overfitting, input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from instructvla.model.action_expert import ActionExpert, ActionExpertConfig

LATENT_DIM = 32


def make_cfg(**overrides: object) -> ActionExpertConfig:
    """A very small expert (32 px, 16 patches per view) so every test runs in well under a second."""
    base = dict(
        image_size=32, vision_num_layers=2, hidden_size=64, intermediate_size=128, num_layers=2, chunk_size=8
    )
    return ActionExpertConfig.preset("tiny", LATENT_DIM, **{**base, **overrides})


def make_inputs(
    cfg: ActionExpertConfig, batch: int = 2, n_latent: int = 5, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "latents": torch.randn(batch, n_latent, cfg.latent_dim, generator=g),
        "images": torch.randn(batch, cfg.num_views, 3, cfg.image_size, cfg.image_size, generator=g),
        "state": torch.randn(batch, cfg.state_dim, generator=g) if cfg.use_state else None,
    }
    return out


def build(cfg: ActionExpertConfig, seed: int = 0) -> ActionExpert:
    torch.manual_seed(seed)
    return ActionExpert(cfg).eval()


# ---------------------------------------------------------------------------------------------------------------- config


def test_config_dict_round_trip_and_unknown_key() -> None:
    cfg = make_cfg(use_state=True, num_views=2)
    assert ActionExpertConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hiden_size"):
        ActionExpertConfig.from_dict({**cfg.to_dict(), "hiden_size": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", 100),  # not divisible into 4 heads of even size
        ("image_size", 30),  # not a multiple of the patch
        ("attention", "causal"),
        ("vision_feature_layer", 5),
        ("num_views", 0),
        ("center_crop_ratio", 1.5),
        ("attention_dropout", 1.0),
        ("noise_repeats", 0),
    ],
)
def test_config_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        make_cfg(**{field: value})


def test_presets() -> None:
    base = ActionExpertConfig.preset("base", 1536)
    assert (base.hidden_size, base.num_layers, base.num_heads, base.intermediate_size) == (768, 12, 12, 3072)
    assert (base.vision_hidden_size, base.vision_num_layers, base.vision_patch_size) == (1024, 24, 14)
    assert base.num_visual_tokens == 256 and base.rope_theta == 1000.0
    assert base.resolved_head_widths() == [3072, 1536, 384]  # method.md: 12288 -> 3072 -> 1536 -> 384 -> 112
    small = ActionExpertConfig.preset("small", 64, num_views=2)
    assert small.num_views == 2
    with pytest.raises(ValueError, match="did you mean 'small'"):
        ActionExpertConfig.preset("smal", 64)


def test_base_size_on_meta_device() -> None:
    """Full-size parameter counts without allocating memory (method.md §2.6 orders of magnitude)."""
    with torch.device("meta"):
        model = ActionExpert(ActionExpertConfig.preset("base", 1536))
    counts = model.count_parameters()
    assert 290e6 < counts["vision"] < 320e6  # DINOv2-L/14 ~304M
    assert 70e6 < counts["film"] < 80e6  # 24 blocks x 2 x Linear(1536 -> 1024) ~75M
    assert 110e6 < counts["transformer"] < 116e6  # 12 x (4 x 768^2 + 3 x 768 x 3072) ~113M
    assert counts["total"] == sum(v for k, v in counts.items() if k not in ("total", "trainable"))


# ---------------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("use_state", [False, True])
def test_shapes_views_and_state(num_views: int, use_state: bool) -> None:
    cfg = make_cfg(num_views=num_views, use_state=use_state)
    model = build(cfg)
    inp = make_inputs(cfg, batch=3)
    x = torch.randn(3, cfg.chunk_size, cfg.action_dim)
    t = torch.rand(3)
    v = model(inp["latents"], inp["images"], inp["state"], x, t)
    assert v.shape == (3, cfg.chunk_size, cfg.action_dim)
    prefix = model.encode_prefix(**inp)
    assert prefix.n_visual == cfg.num_patches * num_views == 16 * num_views
    assert prefix.n_latent == 5 and prefix.n_state == int(use_state)
    assert prefix.keys is not None and len(prefix.keys) == cfg.num_layers
    assert prefix.keys[0].shape == (3, cfg.num_heads, prefix.length, cfg.hidden_size // cfg.num_heads)
    assert model.sample(**inp, num_steps=2).shape == (3, cfg.chunk_size, cfg.action_dim)
    loss = model.loss(**inp, actions=torch.rand(3, cfg.chunk_size, cfg.action_dim))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_preprocess_images() -> None:
    cfg = make_cfg(num_views=2)
    model = build(cfg)
    frames = torch.randint(0, 256, (2, 2, 48, 40, 3), dtype=torch.uint8)
    out = model.preprocess_images(frames)
    assert out.shape == (2, 2, 3, 32, 32) and out.dtype == torch.float32
    white = model.preprocess_images(torch.full((1, 2, 32, 32, 3), 255, dtype=torch.uint8))
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(white[0, 0, :, 5, 5], expected)
    cropped = build(make_cfg(num_views=2, center_crop_ratio=0.875)).preprocess_images(frames)
    assert cropped.shape == out.shape and not torch.allclose(cropped, out)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(1, 1, 32, 32, 3), "uint8"),
        (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "5 dims"),
        (torch.zeros(1, 1, 32, 32, 4, dtype=torch.uint8), "colour channels"),
        (torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8), "views"),
    ],
)
def test_preprocess_images_errors(images: torch.Tensor, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        build(make_cfg()).preprocess_images(images)


def test_bad_inputs_raise_naming_the_problem() -> None:
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg)
    x, t = torch.randn(2, cfg.chunk_size, cfg.action_dim), torch.rand(2)
    bad_latents = inp["latents"].clone()
    bad_latents[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="latents contain NaN"):
        model(bad_latents, inp["images"], None, x, t)
    with pytest.raises(ValueError, match="latents must be"):
        model(inp["latents"][..., :-1], inp["images"], None, x, t)
    with pytest.raises(ValueError, match="images must be preprocessed"):
        model(inp["latents"], torch.randn(2, 1, 3, 48, 48), None, x, t)
    with pytest.raises(ValueError, match="images contain NaN"):
        model(inp["latents"], inp["images"] * float("nan"), None, x, t)
    with pytest.raises(ValueError, match="noisy_actions must have shape"):
        model(inp["latents"], inp["images"], None, x[:, :, :6], t)
    with pytest.raises(ValueError, match="actions must have shape"):
        model.loss(**inp, actions=torch.randn(2, cfg.chunk_size + 1, cfg.action_dim))
    with pytest.raises(ValueError, match="t must have shape"):
        model(inp["latents"], inp["images"], None, x, torch.rand(3))
    with pytest.raises(ValueError, match="use_state=False"):
        model(inp["latents"], inp["images"], torch.zeros(2, 8), x, t)
    with pytest.raises(ValueError, match="action_is_pad"):
        model.loss(**inp, actions=x, action_is_pad=torch.zeros(2, 3, dtype=torch.bool))
    state_model = build(make_cfg(use_state=True))
    with pytest.raises(ValueError, match="state is required"):
        state_model(inp["latents"], inp["images"], None, x, t)
    with pytest.raises(ValueError, match="state contains NaN"):
        state_model(inp["latents"], inp["images"], torch.full((2, 8), float("nan")), x, t)
    with pytest.raises(TypeError, match="ActionExpertConfig"):
        ActionExpert(cfg.to_dict())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------- caching


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("use_state", [False, True])
def test_cached_equals_uncached_with_hard_mask(num_views: int, use_state: bool) -> None:
    cfg = make_cfg(num_views=num_views, use_state=use_state)
    model = build(cfg)
    inp = make_inputs(cfg, batch=3)
    x, t = torch.randn(3, cfg.chunk_size, cfg.action_dim), torch.rand(3)
    with torch.no_grad():
        prefix = model.encode_prefix(**inp)
        torch.testing.assert_close(
            model.velocity(prefix, x, t), model(**inp, noisy_actions=x, t=t), rtol=1e-5, atol=1e-5
        )
    cached = model.sample(**inp, generator=torch.Generator().manual_seed(7), use_cache=True)
    full = model.sample(**inp, generator=torch.Generator().manual_seed(7), use_cache=False)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_state", [False, True])
def test_fast_cached_step_matches_the_reference_step(use_state: bool) -> None:
    """The no-grad fast step (fused/transposed weights, RoPE tables and K/V buffers built once) gives the same
    velocities as the plain module path (taken with autograd on), step after step on one prefix."""
    cfg = make_cfg(use_state=use_state, num_views=2)
    model = build(cfg)
    inp = make_inputs(cfg, batch=3)
    with torch.no_grad():
        prefix = model.encode_prefix(**inp)
    keys_before = [k.clone() for k in prefix.keys]
    for seed in range(3):  # the reused K/V buffers must not leak one step's actions into the next
        g = torch.Generator().manual_seed(seed)
        x, t = torch.randn(3, cfg.chunk_size, cfg.action_dim, generator=g), torch.rand(3, generator=g)
        with torch.no_grad():
            fast = model.velocity(prefix, x, t)
        assert prefix.step is not None
        reference = model.velocity(prefix, x, t).detach()  # grad enabled: the module path
        torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    for before, after in zip(keys_before, prefix.keys, strict=True):
        assert torch.equal(before, after)  # the prefix cache itself is never written


def test_fast_step_follows_weight_changes_and_keeps_state_dict() -> None:
    cfg = make_cfg()
    model = build(cfg)
    keys = set(model.state_dict())
    inp = make_inputs(cfg)
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(0))
    before = model.sample(**inp, noise=noise)
    assert set(model.state_dict()) == keys  # the step caches are plain attributes, not saved
    with torch.no_grad():  # in-place updates (as an optimiser step does) must invalidate the cached copies
        model.transformer.layers[0].self_attn.q_proj.weight.mul_(1.5)
        model.head[0].bias.add_(0.1)
    after = model.sample(**inp, noise=noise)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, model.sample(**inp, noise=noise, use_cache=False), rtol=1e-5, atol=1e-5)


def test_cache_check_is_sensitive_to_a_leaky_mask() -> None:
    """Negative control: a mask that lets the prefix see the actions breaks cached == uncached."""
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg)
    x, t = torch.randn(2, cfg.chunk_size, cfg.action_dim), torch.rand(2)
    with torch.no_grad():
        prefix = model.encode_prefix(**inp)  # exact KV cache under the hard mask
        model.cfg.attention = "soft_bias"  # now the full path lets prefix rows attend to action columns
        full = model(**inp, noisy_actions=x, t=t)
        model.cfg.attention = "hard"
        assert not torch.allclose(model.velocity(prefix, x, t), full, atol=1e-4)


def test_soft_bias_option() -> None:
    hard = build(make_cfg())
    soft = build(make_cfg(attention="soft_bias"))
    soft.load_state_dict(hard.state_dict())
    inp = make_inputs(hard.cfg)
    prefix = soft.encode_prefix(**inp)
    assert prefix.keys is None  # no exact cache: velocity recomputes the transformer
    a = soft.sample(**inp, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = soft.sample(**inp, generator=torch.Generator().manual_seed(3), use_cache=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c = hard.sample(**inp, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(a, c, atol=1e-4)


def test_prefix_does_not_depend_on_actions() -> None:
    """Under the hard mask, changing the noisy actions leaves the prefix's hidden states untouched."""
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg)
    captured: list[torch.Tensor] = []
    hook = model.transformer.norm.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    t = torch.rand(2)
    with torch.no_grad():
        model(**inp, noisy_actions=torch.randn(2, 8, 7), t=t)
        model(**inp, noisy_actions=torch.randn(2, 8, 7), t=t)
    hook.remove()
    p = model.encode_prefix(**inp).length
    torch.testing.assert_close(captured[0][:, :p], captured[1][:, :p], rtol=0, atol=0)
    assert not torch.allclose(captured[0][:, p:], captured[1][:, p:])


# ---------------------------------------------------------------------------------------------------------------- behaviour


def test_determinism_with_generator_and_any_batch() -> None:
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg, batch=5)
    a = model.sample(**inp, generator=torch.Generator().manual_seed(11))
    b = model.sample(**inp, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(**inp, generator=torch.Generator().manual_seed(12)))
    noise = torch.randn(5, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, model.sample(**inp, noise=noise))
    actions = torch.rand(5, cfg.chunk_size, cfg.action_dim)
    l1 = model.loss(**inp, actions=actions, generator=torch.Generator().manual_seed(1))
    l2 = model.loss(**inp, actions=actions, generator=torch.Generator().manual_seed(1))
    assert torch.equal(l1, l2)
    # rows are independent: sampling one row alone gives that row of the batch
    one = model.sample(inp["latents"][2:3], inp["images"][2:3], noise=noise[2:3])
    torch.testing.assert_close(one, a[2:3], rtol=1e-5, atol=1e-5)


def test_film_conditions_vision_on_mean_latent() -> None:
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg)
    with torch.no_grad():
        f0 = model.encode_vision(inp["latents"], inp["images"])
        f1 = model.encode_vision(inp["latents"] + 0.5, inp["images"])
        # same mean over latent tokens -> same FiLM -> same features
        permuted = inp["latents"][:, torch.randperm(inp["latents"].shape[1])]
        f2 = model.encode_vision(permuted, inp["images"])
    assert f0.shape == (2, cfg.num_patches, cfg.vision_hidden_size)
    assert (f0 - f1).abs().max() > 1e-3
    torch.testing.assert_close(f0, f2, rtol=1e-5, atol=1e-5)


def test_vision_feature_layer_quirk_option() -> None:
    model = build(make_cfg(vision_num_layers=3, vision_feature_layer=0))
    assert len(model.vision.dino.encoder.layer) == 1 and len(model.vision.film_gamma) == 1
    assert isinstance(model.vision.dino.layernorm, torch.nn.Identity)
    inp = make_inputs(model.cfg)
    assert model.encode_vision(inp["latents"], inp["images"]).shape == (2, 16, model.cfg.vision_hidden_size)


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """No dead weights (DDP without find_unused_parameters), with two views and state."""
    cfg = make_cfg(num_views=2, use_state=True)
    model = ActionExpert(cfg).train()
    model.loss(**make_inputs(cfg), actions=torch.rand(2, cfg.chunk_size, cfg.action_dim)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_loss_padding_option() -> None:
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg)
    actions = torch.rand(2, cfg.chunk_size, cfg.action_dim)
    pad = torch.zeros(2, cfg.chunk_size, dtype=torch.bool)
    pad[:, 4:] = True

    def loss(m: ActionExpert, **kw: object) -> torch.Tensor:
        return m.loss(**inp, actions=actions, generator=torch.Generator().manual_seed(0), **kw)

    plain = loss(model)
    assert torch.equal(plain, loss(model, action_is_pad=pad))  # method default: padding is part of the loss
    masked = build(dataclasses.replace(cfg, loss_ignore_padding=True))
    masked.load_state_dict(model.state_dict())
    assert torch.equal(loss(masked, action_is_pad=torch.zeros_like(pad)), plain)
    assert not torch.allclose(loss(masked, action_is_pad=pad), plain)


def test_overfits_one_fixed_batch() -> None:
    """Fixed inputs, noise and times (generator re-seeded each step): the loss must fall >= 10x."""
    cfg = make_cfg(vision_num_layers=1)
    model = ActionExpert(cfg).train()
    inp = make_inputs(cfg, batch=8, n_latent=4)
    actions = (
        torch.rand(8, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(3)) * 2 - 1
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = model.loss(**inp, actions=actions, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) * 10 <= losses[0], (losses[0], losses[-10:])


def test_load_vision_weights(tmp_path) -> None:  # noqa: ANN001
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = make_cfg()
    src_cfg = Dinov2WithRegistersConfig(
        hidden_size=cfg.vision_hidden_size,
        num_hidden_layers=3,
        num_attention_heads=cfg.vision_num_heads,
        mlp_ratio=cfg.vision_mlp_ratio,
        patch_size=cfg.vision_patch_size,
        image_size=48,
        num_register_tokens=cfg.vision_num_registers,
    )
    torch.manual_seed(5)
    src = Dinov2WithRegistersModel(src_cfg)
    src.save_pretrained(tmp_path / "dino")
    model = build(cfg)
    model.load_vision_weights(str(tmp_path / "dino"))
    ours = model.vision.dino.state_dict()
    theirs = src.state_dict()
    for key in (
        "encoder.layer.1.attention.q_proj.weight",
        "embeddings.patch_embeddings.projection.weight",
        "layernorm.weight",
        "embeddings.register_tokens",
    ):
        assert torch.equal(ours[key], theirs[key]), key
    # 6x6 -> 4x4 patch grid: position embeddings were resampled
    assert ours["embeddings.position_embeddings"].shape == (1, 1 + 16, cfg.vision_hidden_size)
    with pytest.raises(ValueError, match="vision_num_registers"):
        build(make_cfg(vision_num_registers=2)).load_vision_weights(str(tmp_path / "dino"))


@pytest.mark.slow
def test_learns_conditional_chunks_with_fresh_noise() -> None:
    """Real flow matching (fresh noise and times every step): after training, sampled chunks for 4 different
    (latent, image) conditions are much closer to their own targets than the best single constant chunk is."""
    cfg = make_cfg(vision_num_layers=1)
    torch.manual_seed(0)
    model = ActionExpert(cfg).train()
    inp = make_inputs(cfg, batch=4, n_latent=4)
    actions = (
        torch.rand(4, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(3)) * 2 - 1
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(1200):
        idx = torch.randint(0, 4, (16,), generator=gen)
        loss = model.loss(inp["latents"][idx], inp["images"][idx], None, actions[idx], generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sampled = model.sample(inp["latents"], inp["images"], generator=torch.Generator().manual_seed(2))
    mse = float((sampled - actions).pow(2).mean())
    constant_mse = float((actions.mean(0, keepdim=True) - actions).pow(2).mean())
    assert mse < 0.75 * constant_mse, (mse, constant_mse)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = make_cfg(num_views=2, use_state=True)
    model = ActionExpert(cfg).train()
    inp = make_inputs(cfg)
    actions = torch.rand(2, cfg.chunk_size, cfg.action_dim)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.loss(**inp, actions=actions, generator=torch.Generator().manual_seed(0)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_gradient_checkpointing(True)
    ckpt = grads()
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("use_state", [False, True])
def test_noise_repeats_share_the_prefix_and_equal_tiled_inputs(use_state: bool) -> None:
    """K noisy chunks per example over one shared prefix == the plain loss on the batch tiled K times."""
    cfg = make_cfg(use_state=use_state, num_views=2)
    plain = build(cfg).train()
    shared = build(dataclasses.replace(cfg, noise_repeats=3)).train()
    shared.load_state_dict(plain.state_dict())
    inp = make_inputs(cfg, batch=2)
    actions = torch.rand(2, cfg.chunk_size, cfg.action_dim)
    pad = torch.zeros(2, cfg.chunk_size, dtype=torch.bool)
    tiled = {k: None if v is None else v.repeat(3, *([1] * (v.ndim - 1))) for k, v in inp.items()}
    want = plain.loss(**tiled, actions=actions.repeat(3, 1, 1), generator=torch.Generator().manual_seed(4))
    got = shared.loss(**inp, actions=actions, action_is_pad=pad, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    assert all(p.grad is not None for n, p in shared.named_parameters()
               if p.requires_grad and n not in shared.unused_parameter_names())
    with pytest.raises(ValueError, match="noise_repeats"):
        dataclasses.replace(cfg, noise_repeats=2, attention="soft_bias")


def test_noise_scale() -> None:
    cfg = make_cfg()
    model = build(cfg)
    inp = make_inputs(cfg, batch=3)
    noise = torch.randn(3, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(2))
    half = model.sample(**inp, noise=noise, noise_scale=0.5)
    torch.testing.assert_close(half, model.sample(**inp, noise=0.5 * noise))
    zero = model.sample(**inp, generator=torch.Generator().manual_seed(1), noise_scale=0.0)
    assert torch.equal(zero, model.sample(**inp, generator=torch.Generator().manual_seed(9), noise_scale=0.0))
    assert torch.equal(zero, model.sample(**inp, noise=torch.zeros_like(noise)))
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="noise_scale"):
            model.sample(**inp, noise_scale=bad)

