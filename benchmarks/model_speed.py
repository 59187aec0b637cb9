"""Model speed: action latency, prefix-cached flow sampling, MoLoRA vs peft X-LoRA (generation, training), memory.

Usage: python benchmarks/model_speed.py --device cpu --preset tiny,small --repeats 5
       python benchmarks/model_speed.py --device cuda --preset base --dtype bf16
Prints a table, then (last line) one JSON object with the same figures. Times are the minimum over --repeats after a
warm-up; ratios are measured within one run on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from instructvla.model.processor import action_prompt
from instructvla.model.vla import InstructVLA

TARGETS = {"flow_cache_speedup": 3.0, "think_speedup_vs_xlora": 5.0, "train_step_ratio_vs_xlora": 0.75}


# ---- measurement helpers ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def min_time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Minimum wall time of `fn` over `repeats` runs (after `warmup` runs)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak extra tensor memory of one call: CUDA max_memory_allocated; on CPU the running sum of the torch
    allocator's allocations/frees recorded by the profiler (RSS is useless here: freed blocks are reused)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak / 2**20


# ---- inputs ---------------------------------------------------------------------------------------------------------
def make_samples(model: InstructVLA, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    s = model.config.image_size
    v = model.action_expert.cfg.num_views
    out = []
    for i in range(n):
        out.append({
            "images": rng.integers(0, 256, (v, s, s, 3), dtype=np.uint8),
            "has_action": True,
            "actions": np.clip(rng.standard_normal((16, 7)), -1, 1).astype(np.float32)[: model.action_expert.cfg.chunk_size],
            "conversation": [
                {"role": "user", "content": action_prompt(f"put the apple near the plate {i}", think=True)},
                {"role": "assistant", "content": "I will put the red apple near the white plate."},
            ],
        })
    return out


def build_xlora(model: InstructVLA, tmp: str):
    """peft X-LoRA on a plain copy of `model`'s backbone, with `model`'s two LoRA experts as adapters "0", "1"."""
    import peft
    from transformers import AutoModelForImageTextToText

    with torch.device(model.device):
        hf = AutoModelForImageTextToText.from_config(model.backbone.hf.config)
    hf.load_state_dict(model.backbone.hf.state_dict())
    paths = {}
    for k in ("0", "1"):
        paths[k] = os.path.join(tmp, f"expert{k}")
        model.molora.export_peft(paths[k], expert=int(k))
    cfg = peft.XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=model.backbone.hidden_size, adapters=paths,
        xlora_depth=model.config.moe.gate_depth, xlora_size=model.config.moe.gate_hidden,
        xlora_dropout_p=model.config.moe.gate_dropout,
    )
    xm = peft.get_peft_model(hf, cfg)
    xm.to(model.device)
    return xm


# ---- one preset -----------------------------------------------------------------------------------------------------
def _amp(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def bench_stage1(model: InstructVLA, obs: np.ndarray, device: torch.device, dtype: str, repeats: int) -> dict:
    """(a) action-chunk latency and memory, (b) naive vs prefix-cached flow sampling."""
    res: dict = {}
    gen = torch.Generator(device="cpu")

    def act() -> None:
        with _amp(device, dtype):
            model.predict_action(obs, "put the apple near the plate", generator=gen.manual_seed(0))

    res["action_latency_ms"] = 1e3 * min_time(act, repeats, device)
    res["action_peak_mb"] = peak_memory_mb(act, device)
    with torch.no_grad(), _amp(device, dtype):
        lat, b = model.latents(obs, "put the apple near the plate")
    dino = b["dino_images"].to(device)
    ae = model.action_expert
    noise = torch.randn(1, ae.cfg.chunk_size, ae.cfg.action_dim, generator=gen.manual_seed(1)).to(device)

    def flow(cache: bool) -> Callable[[], object]:
        def run() -> None:
            with torch.no_grad(), _amp(device, dtype):
                ae.sample(lat, dino, None, noise=noise, use_cache=cache)
        return run

    res["flow_naive_ms"] = 1e3 * min_time(flow(False), repeats, device)
    res["flow_cached_ms"] = 1e3 * min_time(flow(True), repeats, device)
    res["flow_cache_speedup"] = res["flow_naive_ms"] / res["flow_cached_ms"]
    return res


def _train_batch(model: InstructVLA, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    tb = model.processor(make_samples(model, batch, seed=1))
    return {k: v.to(device) for k, v in tb.items()}


def bench_ours(model: InstructVLA, enc: dict, tb: dict, device: torch.device, dtype: str, repeats: int,
               think_tokens: int) -> dict:
    """(c) thinking generation with our MoLoRA + KV cache, (d)/(e) one stage-2 training step."""
    res: dict = {}

    def gen() -> None:
        with _amp(device, dtype):
            toks = model._greedy(enc, think_tokens, stop_ids=set())
        assert len(toks) == think_tokens

    res["think_ours_s"] = min_time(gen, max(1, min(repeats, 3)), device)
    model.set_trainable(2)
    model.train()
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-5)
    dgen = torch.Generator(device=device)  # the action expert draws its training noise on the model's device

    def step() -> None:
        with _amp(device, dtype):
            loss = model(tb, generator=dgen.manual_seed(0))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res["train_ours_s"] = min_time(step, repeats, device)
    res["train_ours_peak_mb"] = peak_memory_mb(step, device)
    model.eval()
    return res


def bench_xlora(model: InstructVLA, enc: dict, tb: dict, device: torch.device, dtype: str, repeats: int,
                think_tokens: int) -> dict:
    """The same measurements with peft X-LoRA (adapters "0", "1" = our two experts) on the same backbone."""
    res: dict = {}
    xm = build_xlora(model, tempfile.mkdtemp(prefix="instructvla_bench_")).eval()
    ids = enc["input_ids"][None].to(device)
    pix = enc["pixel_values"][None].to(device)

    def gen() -> None:
        with torch.no_grad(), _amp(device, dtype):
            out = xm.generate(input_ids=ids, pixel_values=pix, max_new_tokens=think_tokens,
                              min_new_tokens=think_tokens, do_sample=False)
        assert out.shape[1] - ids.shape[1] == think_tokens

    res["think_xlora_s"] = min_time(gen, max(1, min(repeats, 3)), device)
    for n, p in xm.named_parameters():
        p.requires_grad_("lora_" in n or "xlora_classifier" in n)
    xm.train()
    opt = torch.optim.AdamW([p for p in xm.parameters() if p.requires_grad], lr=1e-5)
    labels, q = tb["labels"], tb["query_positions"]
    dgen = torch.Generator(device=device)

    def step() -> None:
        with _amp(device, dtype):
            out = xm(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"], pixel_values=tb["pixel_values"],
                     output_hidden_states=True)
            hidden = out.hidden_states[-1]
            sel = labels[:, 1:] != -100
            lm = torch.nn.functional.cross_entropy(out.logits[:, :-1][sel].float(), labels[:, 1:][sel])
            lat = torch.gather(hidden, 1, q[..., None].expand(-1, -1, hidden.shape[-1]))
            fm = model.action_expert.loss(lat, tb["dino_images"], None, tb["actions"], generator=dgen.manual_seed(0))
            loss = fm + lm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res["train_xlora_s"] = min_time(step, repeats, device)
    res["train_xlora_peak_mb"] = peak_memory_mb(step, device)
    return res


def bench_preset(name: str, device: torch.device, dtype: str, repeats: int, batch: int, think_tokens: int) -> dict:
    res: dict = {"preset": name}
    with torch.device(device):  # random init directly on the device
        stage1 = InstructVLA.from_preset(name)
    stage1 = stage1.to(device).eval()
    res["params_total"] = sum(p.numel() for p in stage1.parameters())
    obs = make_samples(stage1, 1)[0]["images"]
    res.update(bench_stage1(stage1, obs, device, dtype, repeats))
    model = InstructVLA.to_stage2(stage1)
    del stage1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-trivial language expert, so both implementations do real work
        for ad in model.molora.adapters.values():
            ad.lora_B[1].copy_(torch.randn(ad.lora_B[1].shape, generator=g).to(ad.lora_B.device) * 0.01)
    enc = model.processor.encode({"images": obs, "conversation": [
        {"role": "user", "content": action_prompt("put the apple near the plate", think=True)}]},
        generation_prompt=True)
    tb = _train_batch(model, batch, device)
    res.update(bench_ours(model, enc, tb, device, dtype, repeats, think_tokens))
    try:
        res.update(bench_xlora(model, enc, tb, device, dtype, repeats, think_tokens))
        res["think_speedup_vs_xlora"] = res["think_xlora_s"] / res["think_ours_s"]
        res["train_step_ratio_vs_xlora"] = res["train_ours_s"] / res["train_xlora_s"]
    except Exception as e:  # noqa: BLE001 - report, keep our own numbers
        res["xlora_error"] = f"{type(e).__name__}: {e}"[:300]
    res["train_batch"] = batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def print_table(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("preset", "xlora_error")))
    width = max(len(k) for k in keys) + 2
    print("metric".ljust(width) + "".join(r["preset"].rjust(14) for r in rows))
    for k in keys:
        cells = []
        for r in rows:
            v = r.get(k)
            cells.append(("n/a" if v is None else f"{v:,.3f}" if isinstance(v, float) else f"{v:,}").rjust(14))
        target = f"  (target {'>=' if k != 'train_step_ratio_vs_xlora' else '<='}{TARGETS[k]})" if k in TARGETS else ""
        print(k.ljust(width) + "".join(cells) + target)
    for r in rows:
        if "xlora_error" in r:
            print(f"X-LoRA failed for {r['preset']}: {r['xlora_error']}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="tiny", help="comma-separated backbone presets, e.g. tiny,small or base")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="training batch size")
    ap.add_argument("--think-tokens", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = [bench_preset(p.strip(), device, args.dtype, args.repeats, args.batch, args.think_tokens)
            for p in args.preset.split(",") if p.strip()]
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "dtype": args.dtype, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    print(f"# model_speed on {meta['device']} ({args.dtype}, {args.threads} thread(s), min of {args.repeats})")
    print_table(rows)
    result = {"meta": meta, "results": rows, "targets": TARGETS}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
