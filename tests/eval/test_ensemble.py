"""Adaptive action ensemble and open-loop first-k execution."""

import numpy as np
import pytest

from instructvla.eval.ensemble import AdaptiveEnsemble, OpenLoopChunker, ensemble_weights


def _reference_ensemble(chunks: list[np.ndarray], alpha: float) -> np.ndarray:
    """Straightforward re-derivation: chunk predicted i steps ago contributes entry i."""
    newest = chunks[-1]
    cands, logits = [], []
    for i, c in enumerate(reversed(chunks)):
        if i >= len(c):
            continue
        v = c[i]
        cos = float(v @ newest[0] / (np.linalg.norm(v) * np.linalg.norm(newest[0])))
        cands.append(v)
        logits.append(alpha * cos)
    w = np.exp(logits)
    w /= w.sum()
    return (w[:, None] * np.stack(cands)).sum(0)


def test_single_chunk_returns_its_first_action():
    ens = AdaptiveEnsemble(horizon=4)
    chunk = np.arange(16 * 7, dtype=np.float32).reshape(16, 7) + 1
    np.testing.assert_allclose(ens.add(chunk), chunk[0])


def test_matches_reference_and_keeps_only_k_chunks():
    rng = np.random.default_rng(0)
    ens = AdaptiveEnsemble(horizon=3, alpha=0.1)
    chunks = [rng.normal(size=(16, 7)) for _ in range(6)]
    for t, c in enumerate(chunks):
        out = ens.add(c)
        window = chunks[max(0, t - 2) : t + 1]
        np.testing.assert_allclose(out, _reference_ensemble(window, 0.1), rtol=1e-5, atol=1e-6)
        assert len(ens) == min(t + 1, 3)
    assert out.dtype == np.float32


def test_takes_entry_i_of_chunk_predicted_i_steps_ago():
    # Chunk t holds value (t*100 + j) in every dim at row j; with alpha=0 weights are equal.
    ens = AdaptiveEnsemble(horizon=3, alpha=0.0)
    for t in range(3):
        chunk = np.repeat((t * 100 + np.arange(16, dtype=np.float64))[:, None] + 1, 7, axis=1)
        out = ens.add(chunk)
    # newest (t=2) entry 0 -> 201, t=1 entry 1 -> 102, t=0 entry 2 -> 3
    np.testing.assert_allclose(out, np.full(7, (201 + 102 + 3) / 3), rtol=1e-6)


def test_weights_favour_agreeing_candidates():
    ref = np.array([1.0, 0.0])
    w = ensemble_weights(np.array([[1.0, 0.0], [-1.0, 0.0]]), ref, alpha=0.1)
    assert w[0] > w[1]
    np.testing.assert_allclose(w.sum(), 1.0)
    np.testing.assert_allclose(w[0] / w[1], np.exp(0.2), rtol=1e-6)
    # zero vectors do not produce NaN
    w0 = ensemble_weights(np.zeros((2, 2)), np.zeros(2), alpha=0.1)
    np.testing.assert_allclose(w0, [0.5, 0.5])


def test_short_chunks_are_skipped_when_too_old():
    ens = AdaptiveEnsemble(horizon=4, alpha=0.0)
    ens.add(np.full((1, 2), 5.0))
    out = ens.add(np.full((1, 2), 1.0))  # old chunk has no entry 1 -> only the newest counts
    np.testing.assert_allclose(out, [1.0, 1.0])


def test_reset_and_bad_input():
    ens = AdaptiveEnsemble(horizon=2)
    ens.add(np.ones((4, 7)))
    ens.reset()
    assert len(ens) == 0
    with pytest.raises(ValueError, match="shape"):
        ens.add(np.ones(7))
    with pytest.raises(ValueError, match="NaN"):
        ens.add(np.full((4, 7), np.nan))
    ens.add(np.ones((4, 7)))
    with pytest.raises(ValueError, match="action_dim"):
        ens.add(np.ones((4, 6)))
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveEnsemble(horizon=0)


def test_open_loop_chunker_executes_first_k():
    chunker = OpenLoopChunker(k=3)
    chunks = [np.arange(16 * 7, dtype=np.float32).reshape(16, 7) + 1000 * i for i in range(3)]
    got, used = [], 0
    for _ in range(7):
        if chunker.needs_chunk():
            chunker.set_chunk(chunks[used])
            used += 1
        got.append(chunker.pop())
    assert used == 3
    np.testing.assert_array_equal(got[0], chunks[0][0])
    np.testing.assert_array_equal(got[2], chunks[0][2])
    np.testing.assert_array_equal(got[3], chunks[1][0])
    np.testing.assert_array_equal(got[6], chunks[2][0])
    with pytest.raises(ValueError, match="k=3"):
        chunker.set_chunk(np.ones((2, 7)))
    chunker.reset()
    with pytest.raises(RuntimeError, match="set_chunk"):
        chunker.pop()
