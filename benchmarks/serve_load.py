"""Load and fuzz benchmark of `instructvla serve` on loopback with a random tiny policy.

Phases (all bounded, 127.0.0.1 only; the server runs in a child process so clients do not share its GIL):
  1. `Policy.infer` alone, in the server process (p50 / p99 ms).
  2. load: N concurrent clients for a fixed time -> round-trip p50/p99, requests/s, and the server overhead per request
     (round trip minus the server's own `Policy.infer` time, same request) at N=1 and at N.
  3. fuzz: >= 10,000 random / mutated / oversized / wrong-typed messages; every one must get an error frame (or a
     normal reply when the mutation left it valid); the server must never crash and must serve a valid request after.

Prints a table, then one JSON object (the same figures) as the very last line.

    python benchmarks/serve_load.py --clients 4 --duration 5 --fuzz 10000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import threading
import time
import urllib.request
from typing import Any

import msgpack
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus

from instructvla.serve.client import ServerError, WebsocketPolicyClient
from instructvla.serve.protocol import ProtocolError, RequestSpec, pack, unpack, validate_request


# --------------------------------------------------------------------------------------------------- server process
def _server_main(conn: Any, max_message_bytes: int, image_size: int, infer_reps: int) -> None:
    import torch

    torch.set_num_threads(1)
    from instructvla.policy import Policy
    from instructvla.serve.server import PolicyServer, ServerThread

    policy = Policy.random_tiny()
    obs = _valid_obs(policy.metadata(), image_size, np.random.default_rng(0))
    policy.spawn().infer(obs)  # warm-up
    times = []
    probe = policy.spawn()
    for _ in range(infer_reps):
        t = time.perf_counter()
        probe.infer(obs)
        times.append((time.perf_counter() - t) * 1e3)
    server = PolicyServer(policy, host="127.0.0.1", port=0, max_message_bytes=max_message_bytes)
    with ServerThread(server) as st:
        conn.send({"port": st.port, "infer_ms": times, "metadata_cameras": policy.metadata()["cameras"]})
        conn.recv()  # wait for "stop"
    conn.send({"served": server.requests_served, "errors": server.errors_sent})


def _valid_obs(meta: dict, image_size: int, rng: np.random.Generator) -> dict:
    obs: dict[str, Any] = {
        "observation/image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
        "prompt": "pick up the red cube and put it on the plate",
    }
    if "observation/wrist_image" in meta["cameras"]:
        obs["observation/wrist_image"] = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    if meta.get("state"):
        obs["observation/state"] = rng.normal(size=meta["state"]["dim"]).astype(np.float32)
    return obs


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ----------------------------------------------------------------------------------------------------------- load
def _load_phase(url: str, n_clients: int, duration_s: float, image_size: int) -> dict:
    results: list[list[tuple[float, float, float]]] = [[] for _ in range(n_clients)]
    errors: list[str] = []
    start = threading.Barrier(n_clients)

    def worker(i: int) -> None:
        try:
            with WebsocketPolicyClient(url) as client:
                obs = _valid_obs(client.metadata, image_size, np.random.default_rng(i))
                start.wait()
                deadline = time.perf_counter() + duration_s
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    reply = client.infer(obs)
                    rtt = (time.perf_counter() - t) * 1e3
                    st = reply["server_timing"]
                    results[i].append((rtt, float(st["infer_ms"]), float(st["server_ms"])))
        except Exception as e:  # reported, makes the run fail
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 120)
    wall = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    rtts = [r[0] for r in flat]
    overhead = [r[0] - r[1] for r in flat]
    in_server = [r[2] - r[1] for r in flat]  # receive -> reply packed, minus Policy.infer (includes queueing)
    return {
        "clients": n_clients,
        "requests": len(flat),
        "requests_per_s": len(flat) / max(duration_s, 1e-9),
        "wall_s": wall,
        "rtt_p50_ms": _pct(rtts, 50),
        "rtt_p99_ms": _pct(rtts, 99),
        "overhead_p50_ms": _pct(overhead, 50),
        "overhead_p99_ms": _pct(overhead, 99),
        "in_server_overhead_p50_ms": _pct(in_server, 50),
        "client_errors": errors,
    }


# ----------------------------------------------------------------------------------------------------------- fuzz
def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 6 else 6)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return rng.choice([float("nan"), float("inf"), -0.0, 1e308, rng.random()])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(20)))
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return np.asarray(rng.random(), dtype=rng.choice(["<f4", "<f8", "|u1", "<i8", "|b1", ">f4"]))
    if kind in (6, 7):
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["observation/image", "prompt", "options", "observation/state", b"__ndarray__", "x", b"data", b"shape"]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate_obs(base: dict, rng: random.Random) -> Any:
    obs = dict(base)
    key = rng.choice(list(obs) + ["options", "observation/unknown", "prompt"])
    choice = rng.randrange(14)
    if choice == 0:
        obs.pop(key, None)
    elif choice == 1:
        obs[key] = _junk(rng)
    elif choice == 2:
        obs["observation/image"] = np.zeros((rng.randrange(1, 40), rng.randrange(1, 40), rng.choice([1, 3, 4])),
                                            dtype=rng.choice([np.uint8, np.float32, np.int16]))
    elif choice == 3:
        obs["observation/state"] = np.array([rng.choice([np.nan, np.inf, -np.inf, 1.0])] * rng.choice([7, 8, 9]))
    elif choice == 4:
        obs["options"] = {rng.choice(["think", "mode", "reset", "max_new_tokens", "thinking", "modee"]): _junk(rng)}
    elif choice == 5:
        obs["prompt"] = rng.choice(["", " ", "x" * 10_000, "\x00", 5, None, ["a"]])
    elif choice == 6:
        return _junk(rng)
    elif choice == 7:
        return [obs]
    elif choice == 8:
        return {b"observation/image": obs.get("observation/image"), "prompt": "x"}
    elif choice == 9:
        nested: Any = obs
        for _ in range(rng.randrange(1, 60)):
            nested = {"options": nested} if rng.random() < 0.5 else [nested]
        return nested
    elif choice == 10:
        obs["options"] = {"mode": rng.choice(["chat", "act", "dance", 1])}
    elif choice == 11:
        obs["observation/image"] = np.asarray(obs["observation/image"]).transpose(2, 0, 1).copy()
    else:
        obs[key] = obs.get(key)
    return obs


def _raw_ndarray_lie(rng: random.Random) -> bytes:
    """A frame whose ndarray map lies about its dtype/shape/data."""
    arr = {b"__ndarray__": True, b"data": bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
           b"dtype": rng.choice(["<f4", "|O", "|V8", "<c8", "zz", "<M8[s]", "|S3", 7, b"<f4"]),
           b"shape": rng.choice([[4], [-1], [2**40, 2**40], "x", [1.5], list(range(20))])}
    return msgpack.packb({"observation/image": arr, "prompt": "p"}, use_bin_type=True)


def _is_valid(frame: Any, spec: RequestSpec) -> bool:
    try:
        validate_request(unpack(frame), spec)
        return True
    except ProtocolError:
        return False


def _fuzz_messages(base: dict, n: int, max_message_bytes: int, seed: int, spec: RequestSpec,
                   probe_every: int) -> list[tuple[str, Any]]:
    """n malformed messages (a mutation that happens to stay valid is redrawn) plus a valid probe every
    `probe_every` messages, which must be answered normally."""
    rng = random.Random(seed)
    valid = pack(base)
    msgs: list[tuple[str, Any]] = []
    while len(msgs) < n:
        if msgs and len(msgs) % probe_every == 0 and msgs[-1][0] != "valid_probe":
            msgs.append(("valid_probe", valid))
        r = rng.random()
        if r < 0.25:
            msgs.append(("random_bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))))
        elif r < 0.50:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                op, i = rng.randrange(4), rng.randrange(len(data))
                if op == 0:
                    data[i] ^= 1 << rng.randrange(8)
                elif op == 1:
                    data[i] = rng.randrange(256)
                elif op == 2:
                    del data[i : i + rng.randrange(1, 64)]
                else:
                    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            if rng.random() < 0.2:
                data = data[: rng.randrange(len(data))]
            msgs.append(("mutated_bytes", bytes(data)))
        elif r < 0.85:
            try:
                msgs.append(("mutated_obs", pack(_mutate_obs(base, rng))))
            except (TypeError, ValueError, OverflowError):  # unpackable junk: send its repr as text instead
                msgs.append(("text_frame", "not msgpack"))
        elif r < 0.93:
            msgs.append(("ndarray_lie", _raw_ndarray_lie(rng)))
        elif r < 0.97:
            msgs.append(("text_frame", "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(50)))))
        else:
            msgs.append(("deep_nesting", b"\x91" * rng.randrange(100, 200_000) + b"\xc0"))
        if msgs[-1][0] != "valid_probe" and _is_valid(msgs[-1][1], spec):
            msgs.pop()  # the mutation left it valid: draw again
    # oversized: above the soft limit (error frame) and above the hard limit (connection closed with 1009)
    for item in (("oversized_soft", b"\x00" * (max_message_bytes + 1)),
                 ("oversized_soft", pack({**base, "prompt": "x" * (max_message_bytes + 10)})),
                 ("oversized_hard", b"\x00" * (4 * max_message_bytes + 1))):
        msgs.insert(rng.randrange(len(msgs) + 1), item)
    return msgs


def _fuzz_phase(url: str, port: int, base: dict, n: int, max_message_bytes: int, seed: int, spec: RequestSpec,
                probe_every: int = 250) -> dict:
    msgs = _fuzz_messages(base, n, max_message_bytes, seed, spec, probe_every)
    counts: dict[str, int] = {"error_frames": 0, "probe_ok": 0, "probe_failed": 0, "unexpected_valid_replies": 0,
                              "expected_closes": 0, "unexpected_closes": 0, "no_reply": 0}
    kinds: dict[str, int] = {}
    client = WebsocketPolicyClient(url, reply_timeout_s=60)
    t0 = time.perf_counter()
    for kind, frame in msgs:
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            reply = client.send_raw(frame)
            if kind == "valid_probe":
                counts["probe_ok" if isinstance(reply, bytes) else "probe_failed"] += 1
            elif isinstance(reply, str) and ": " in reply:
                counts["error_frames"] += 1
            elif isinstance(reply, str):
                counts["no_reply"] += 1  # an error frame without a code
            else:
                counts["unexpected_valid_replies"] += 1
        except ConnectionClosed as e:
            key = "expected_closes" if kind == "oversized_hard" and e.rcvd and e.rcvd.code == 1009 else \
                "unexpected_closes"
            counts[key] += 1
            client = WebsocketPolicyClient(url, reply_timeout_s=60)
        except TimeoutError:
            counts["no_reply"] += 1
            client = WebsocketPolicyClient(url, reply_timeout_s=60)
    fuzz_s = time.perf_counter() - t0
    # afterwards: health check and one valid request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        healthy = resp.status == 200
    try:
        ok = client.infer(base)["actions"].ndim == 2
    except (ServerError, ConnectionClosed, InvalidStatus):
        ok = False
    client.close()
    return {"messages": len(msgs), "kinds": kinds, **counts, "fuzz_s": fuzz_s, "healthy_after": healthy,
            "serves_after": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients in the load phase")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load phase")
    ap.add_argument("--fuzz", type=int, default=10_000, help="number of fuzz messages (0 = skip)")
    ap.add_argument("--image-size", type=int, default=224, help="side of the camera images sent")
    ap.add_argument("--infer-reps", type=int, default=30, help="repeats of Policy.infer alone")
    ap.add_argument("--max-message-bytes", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.clients < 1 or args.duration <= 0:
        ap.error("--clients must be >= 1 and --duration > 0")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(child, args.max_message_bytes, args.image_size, args.infer_reps),
                       daemon=True)
    proc.start()
    if not parent.poll(300):
        raise SystemExit("server process did not start within 300 s")
    info = parent.recv()
    url = f"ws://127.0.0.1:{info['port']}"
    infer_ms = info["infer_ms"]

    with WebsocketPolicyClient(url) as c:
        meta = c.metadata
    # fuzz from a small valid request, so that byte mutations mostly hit structure rather than pixel data
    base = _valid_obs(meta, 16, np.random.default_rng(123))
    single = _load_phase(url, 1, args.duration, args.image_size)
    multi = _load_phase(url, args.clients, args.duration, args.image_size) if args.clients > 1 else single
    spec = RequestSpec(wrist_camera="observation/wrist_image" in meta["cameras"],
                       state_dim=meta["state"]["dim"] if meta.get("state") else None)
    fuzz = (_fuzz_phase(url, info["port"], base, args.fuzz, args.max_message_bytes, args.seed, spec)
            if args.fuzz else None)

    alive_after = proc.is_alive()
    parent.send("stop")
    final = parent.recv() if parent.poll(60) else {}
    proc.join(60)
    crashes = 0 if alive_after and (fuzz is None or (fuzz["healthy_after"] and fuzz["serves_after"]
                                                     and fuzz["unexpected_closes"] == 0)) else 1

    print(f"{'phase':<22}{'clients':>8}{'req':>8}{'req/s':>9}{'rtt p50':>10}{'rtt p99':>10}{'ovh p50':>10}"
          f"{'ovh p99':>10}")
    for name, r in (("load (1 client)", single), (f"load ({args.clients} clients)", multi)):
        print(f"{name:<22}{r['clients']:>8}{r['requests']:>8}{r['requests_per_s']:>9.1f}{r['rtt_p50_ms']:>10.2f}"
              f"{r['rtt_p99_ms']:>10.2f}{r['overhead_p50_ms']:>10.2f}{r['overhead_p99_ms']:>10.2f}")
    print(f"Policy.infer alone: p50 {statistics.median(infer_ms):.2f} ms, p99 {_pct(infer_ms, 99):.2f} ms "
          f"(image {args.image_size}px, random tiny policy)")
    print(f"server overhead p50 at 1 client: {single['overhead_p50_ms']:.2f} ms round trip - Policy.infer "
          f"(target <= 2 ms); inside the server process: {single['in_server_overhead_p50_ms']:.2f} ms")
    if fuzz:
        print(f"fuzz: {fuzz['messages']} messages in {fuzz['fuzz_s']:.1f} s -> {fuzz['error_frames']} error frames, "
              f"{fuzz['unexpected_valid_replies']} unexpected valid replies, valid probes ok/failed "
              f"{fuzz['probe_ok']}/{fuzz['probe_failed']}, {fuzz['expected_closes']} expected closes (over hard limit), "
              f"{fuzz['unexpected_closes']} unexpected closes, {fuzz['no_reply']} unanswered; "
              f"healthy after: {fuzz['healthy_after']}, serves after: {fuzz['serves_after']}; crashes: {crashes}")
    for r in (single, multi):
        for e in r["client_errors"]:
            print("client error:", e)
    print(json.dumps({
        "image_size": args.image_size,
        "policy_infer_p50_ms": statistics.median(infer_ms),
        "policy_infer_p99_ms": _pct(infer_ms, 99),
        "load_1": {k: v for k, v in single.items() if k != "client_errors"},
        "load_n": {k: v for k, v in multi.items() if k != "client_errors"},
        "overhead_p50_ms": single["overhead_p50_ms"],
        "overhead_target_met": single["overhead_p50_ms"] <= 2.0,
        "client_errors": single["client_errors"] + multi["client_errors"],
        "fuzz": fuzz,
        "server_crashes": crashes,
        "server_counts": final,
    }))


if __name__ == "__main__":
    main()
