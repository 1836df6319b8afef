"""A gold judge from a real package: VADER sentiment (Hutto and Gilbert 2014, the `vaderSentiment` package).

The main job labels its preference pairs with it, trains a reward model on those comparisons, and judges
the trained policy with it: the learned reward never sees this function, only the labels it produced.
"""

from __future__ import annotations

from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@lru_cache(maxsize=1)
def _analyzer():
    return SentimentIntensityAnalyzer()


def vader(prompts: list[str], responses: list[str]) -> list[float]:
    """VADER's compound sentiment of each response, in [-1, 1] (the prompt is ignored); empty text scores -1."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(r)["compound"] if r.strip() else -1.0 for r in responses]
