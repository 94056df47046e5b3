"""SQuAD v1.1's exact match and F1, as its official evaluation script defines them.

An answer is normalised before comparing: lowercased, punctuation removed, the articles
a/an/the removed (as whole words), whitespace collapsed. F1 counts shared tokens of the
normalised prediction and gold answer; each prediction scores its best over the gold
answers, and the dataset scores are means ×100. No torch here: tests and the CLI use it as is.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:  # also when either side normalises to nothing, as in the official script
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over(metric, prediction: str, golds: Iterable[str]) -> float:
    return max((metric(prediction, gold) for gold in golds), default=0.0)


def score(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 (0-100) of predictions against their lists of gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    n = max(len(predictions), 1)
    return {
        "exact_match": 100 * sum(best_over(exact_match, p, g) for p, g in zip(predictions, golds)) / n,
        "f1": 100 * sum(best_over(f1, p, g) for p, g in zip(predictions, golds)) / n,
    }


def gold_answers(answers) -> list[str]:
    """answers.text of Hugging Face's squad, or SQuAD v1.1's [{"text": ...}, ...]."""
    if isinstance(answers, dict):
        texts = answers.get("text") or []
    elif isinstance(answers, list):
        texts = [a.get("text") if isinstance(a, dict) else a for a in answers]
    else:
        texts = []
    return [t for t in texts if isinstance(t, str)]
