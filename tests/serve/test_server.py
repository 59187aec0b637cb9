"""The websocket server: openpi-client interop, malformed input, per-client episodes, API key, shutdown."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from instructvla.policy import Policy, PolicyConfig
from instructvla.serve.client import ChunkBroker, EnsembledPolicy, ServerError, WebsocketPolicyClient
from instructvla.serve.protocol import pack
from instructvla.serve.server import PolicyServer, ServeConfig, ServerThread

openpi = pytest.importorskip("openpi_client.websocket_client_policy")

PROMPT = "put the green block on the plate"


@pytest.fixture(scope="module")
def policy():
    return Policy.random_tiny(PolicyConfig(ensemble=True, ensemble_horizon=3))


@pytest.fixture(scope="module")
def server(policy):
    srv = PolicyServer(policy, host="127.0.0.1", port=0, max_message_bytes=64 * 1024)
    with ServerThread(srv) as st:
        yield st


def _obs(rng, size=32):
    return {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "prompt": PROMPT}


def test_openpi_client_gets_metadata_and_actions(server):
    client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    meta = client.get_server_metadata()
    assert meta["chunk_size"] == 16 and meta["action_space"]["dim"] == 7
    assert meta["cameras"] == ["observation/image"] and meta["protocol_version"] == 1
    assert meta["ensemble"]["enabled"] is True and meta["requires_api_key"] is False
    out = client.infer(_obs(np.random.default_rng(0)))
    assert out["actions"].shape == (16, 7) and out["actions"].dtype == np.float32
    assert out["raw_actions"].shape == (16, 7)
    assert out["server_timing"]["infer_ms"] > 0 and "queue_ms" in out["server_timing"]
    with pytest.raises(RuntimeError, match="missing required key 'prompt'"):
        client.infer({"observation/image": np.zeros((32, 32, 3), np.uint8)})
    assert client.infer(_obs(np.random.default_rng(1)))["actions"].shape == (16, 7)
    client._ws.close()


def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"OK\n"


GOOD = {"observation/image": np.zeros((16, 16, 3), np.uint8), "prompt": PROMPT}
MALFORMED = [
    (b"\xc1\x00garbage", "bad_message: not a valid msgpack"),
    (b"", "bad_message: not a valid msgpack"),
    ("hello", "bad_message: expected a binary msgpack frame"),
    (pack([1, 2, 3]), "bad_request: a request must be a map"),
    (pack({"prompt": PROMPT}), "bad_request: missing required key 'observation/image'"),
    (pack({k: v for k, v in GOOD.items() if k != "prompt"}), "missing required key 'prompt'"),
    (pack({**GOOD, "observation/image": np.zeros((16, 16, 3), np.float32)}), "must have dtype uint8, got float32"),
    (pack({**GOOD, "observation/image": np.zeros((3, 16, 16), np.uint8)}), r"must have shape \(H, W, 3\)"),
    (pack({**GOOD, "observation/image": [[1, 2, 3]]}), "must be an ndarray"),
    (pack({**GOOD, "observation/state": np.array([np.nan] * 8)}), "takes no proprio state"),
    (pack({**GOOD, "options": {"think": True, "temperature": 1.0}}), "unknown option 'temperature'"),
    (pack({**GOOD, "options": {"mode": "sing"}}), "option 'mode' must be one of"),
    (pack({**GOOD, "promt": "x"}), "did you mean 'prompt'"),
    (pack({**GOOD, "prompt": ""}), "'prompt' is empty"),
    (msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"\x00", b"dtype": "|O", b"shape": [1]},
                    "prompt": PROMPT}), "dtype '|O' is not allowed"),
    (msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"\x00" * 5, b"dtype": "|u1",
                                          b"shape": [16, 16, 3]}, "prompt": PROMPT}), "needs 768 bytes, got 5"),
    (b"\x91" * 50_000 + b"\xc0", "bad_message"),  # nesting deeper than msgpack's stack
    (pack({**GOOD, "prompt": "word " * 700}), "the model rejected the request"),
    (b"\x00" * (64 * 1024 + 1), "too_large: message of 65537 bytes exceeds the limit of 65536 bytes"),
]


def test_every_malformed_message_gets_a_clear_error_and_the_connection_continues(server):
    with WebsocketPolicyClient(server.url) as client:
        for frame, expected in MALFORMED:
            reply = client.send_raw(frame)
            assert isinstance(reply, str), f"expected an error frame for {expected!r}"
            assert re.search(expected, reply), (expected, reply)
            assert re.match(r"^(bad_message|bad_request|too_large): ", reply)
        # the same connection still serves
        assert client.infer(GOOD)["actions"].shape == (16, 7)
        with pytest.raises(ServerError) as info:
            client.infer({"prompt": PROMPT})
        assert info.value.code == "bad_request"


def test_frame_over_hard_limit_closes_only_that_connection(server):
    client = WebsocketPolicyClient(server.url)
    with pytest.raises(ConnectionClosed) as info:
        client.send_raw(b"\x00" * (4 * 64 * 1024 + 1))
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with WebsocketPolicyClient(server.url) as other:
        assert other.infer(GOOD)["actions"].shape == (16, 7)


def test_random_mutations_never_break_the_server(server):
    rng = np.random.default_rng(0)
    base = pack(GOOD)
    with WebsocketPolicyClient(server.url) as client:
        for _ in range(300):
            data = bytearray(base[:200]) if rng.random() < 0.5 else bytearray(rng.bytes(int(rng.integers(1, 100))))
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            reply = client.send_raw(bytes(data))
            assert isinstance(reply, str) and ": " in reply
        assert client.infer(GOOD)["actions"].shape == (16, 7)


def test_concurrent_clients_keep_their_own_episode_state(server, policy):
    """Two clients interleaving requests get exactly what each would get alone (ensemble buffer, noise seed)."""
    rng = np.random.default_rng(3)
    seqs = [[_obs(rng) for _ in range(4)] for _ in range(2)]
    expected = []
    for seq in seqs:
        alone = policy.spawn()
        expected.append([alone.infer(o)["actions"] for o in seq])
    got: list[list[np.ndarray]] = [[], []]
    raw: list[list[np.ndarray]] = [[], []]
    errors = []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            with WebsocketPolicyClient(server.url) as client:
                barrier.wait()
                for o in seqs[i]:
                    reply = client.infer(o)
                    got[i].append(reply["actions"])
                    raw[i].append(reply["raw_actions"])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i in range(2):
        for a, b in zip(got[i], expected[i]):
            np.testing.assert_array_equal(a, b)
    # the ensemble really carried state across steps: later first actions differ from the raw chunks' first rows
    np.testing.assert_array_equal(got[0][0][0], raw[0][0][0])
    assert any(not np.array_equal(got[i][t][0], raw[i][t][0]) for i in range(2) for t in range(1, 4))


def test_api_key_enforced(policy):
    srv = PolicyServer(policy, host="127.0.0.1", port=0, api_key="s3cret")
    with ServerThread(srv) as st:
        with pytest.raises(InvalidStatus) as info:
            openpi.WebsocketClientPolicy(host="127.0.0.1", port=st.port)
        assert info.value.response.status_code == 401
        assert b"API key" in info.value.response.body
        with pytest.raises(InvalidStatus):
            WebsocketPolicyClient(st.url, api_key="wrong")
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=st.port, api_key="s3cret")
        assert client.get_server_metadata()["requires_api_key"] is True
        assert client.infer(GOOD)["actions"].shape == (16, 7)
        client._ws.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{st.port}/healthz", timeout=10) as resp:
            assert resp.status == 200


def test_chunk_broker_and_client_ensemble(server):
    rng = np.random.default_rng(4)
    with WebsocketPolicyClient(server.url) as client:
        calls = []
        orig = client.infer
        client.infer = lambda obs: calls.append(1) or orig(obs)
        broker = ChunkBroker(client, execute_k=4)
        steps = [broker.infer(_obs(rng)) for _ in range(9)]
        assert len(calls) == 3 and steps[0]["actions"].shape == (7,)
        assert [s["chunk_step"] for s in steps] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
        broker.reset()
        assert client._reset_next
        ens = EnsembledPolicy(client, horizon=2)
        out = ens.infer(_obs(rng))
        assert out["actions"].shape == (7,) and out["chunk"].shape == (16, 7)


def test_serve_config_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        ServeConfig()
    with pytest.raises(ValueError, match="not a directory"):
        ServeConfig(policy=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="port"):
        ServeConfig(random_tiny=True, port=70000)
    assert ServeConfig(random_tiny=True).host == "127.0.0.1"


@pytest.mark.slow
def test_cli_serve_shuts_down_gracefully_on_sigterm():
    env = {**os.environ, "INSTRUCTVLA_API_KEY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructvla.cli", "serve", "--random_tiny=true", "--port=0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        port, deadline = None, time.time() + 120
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "server did not report its port"
        client = WebsocketPolicyClient(f"ws://127.0.0.1:{port}")
        assert client.infer(GOOD)["actions"].shape == (16, 7)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(ConnectionClosed) as info:
            client.infer(GOOD)
        assert info.value.rcvd is None or info.value.rcvd.code == 1001
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_chat_mode_over_the_wire(server, tmp_path, capsys):
    from PIL import Image

    from instructvla.serve.chat import ChatConfig, ask, chat

    img = np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "scene.png")
    with WebsocketPolicyClient(server.url) as client:
        assert isinstance(ask(client, img, "what is on the table?", max_new_tokens=4), str)
        reply = client.infer({**GOOD, "options": {"mode": "chat", "max_new_tokens": 3}})
        assert set(reply) == {"text", "server_timing"}
    assert chat(ChatConfig(server=server.url, image=str(tmp_path / "scene.png"), question="what colour?",
                           max_new_tokens=4)) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(ValueError, match="exactly one of"):
        ChatConfig(image=str(tmp_path / "scene.png"))
    with pytest.raises(ValueError, match="not a file"):
        ChatConfig(random_tiny=True, image=str(tmp_path / "missing.png"))


def test_shutdown_drains_in_flight_request(policy):
    srv = PolicyServer(policy, host="127.0.0.1", port=0, shutdown_grace_s=30)
    st = ServerThread(srv).start()
    client = WebsocketPolicyClient(st.url)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("reply", client.infer(GOOD)))
    t.start()
    deadline = time.time() + 30
    while srv._inflight == 0 and t.is_alive() and time.time() < deadline:
        time.sleep(0.0005)
    st.stop()
    t.join(30)
    assert result["reply"]["actions"].shape == (16, 7)  # answered before the connection closed
    with pytest.raises(ConnectionClosed) as info:
        client.infer(GOOD)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert info.value.rcvd.reason == "server shutting down"
