"""Statistics for evaluation gates: Wilson intervals, the paired promotion test, ranking agreement.

The promotion gate compares challenger and champion on the *same* initial states (paired binary
outcomes), so it uses the exact one-sided McNemar test (a binomial sign test on the discordant pairs):
under H0 (equal success rates) a discordant pair is equally likely to favour either model.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from scipy.stats import binom


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% (by default) Wilson score interval of a binomial proportion; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class PairedTest:
    """Outcome of the paired promotion test."""

    n: int
    challenger_successes: int
    champion_successes: int
    challenger_only: int  # discordant pairs the challenger won
    champion_only: int  # discordant pairs the champion won
    p_value: float  # one-sided: P(challenger_only >= observed | H0)
    alpha: float

    @property
    def better(self) -> bool:
        return self.challenger_only > self.champion_only and self.p_value < self.alpha

    def reason(self) -> str:
        verdict = "better beyond noise" if self.better else "not better beyond noise"
        return (f"challenger {self.challenger_successes}/{self.n} vs champion {self.champion_successes}/{self.n} "
                f"on paired states; discordant {self.challenger_only}:{self.champion_only}; exact McNemar "
                f"one-sided p={self.p_value:.3g} (alpha {self.alpha}): {verdict}")


def paired_promotion_test(challenger: Sequence[bool], champion: Sequence[bool], alpha: float = 0.1) -> PairedTest:
    """Exact one-sided McNemar test that the challenger succeeds more often on the same states."""
    if len(challenger) != len(champion):
        raise ValueError(f"paired outcomes differ in length: {len(challenger)} vs {len(champion)}")
    b = sum(1 for c, k in zip(challenger, champion) if c and not k)
    c = sum(1 for ch, k in zip(challenger, champion) if k and not ch)
    d = b + c
    p = float(binom.sf(b - 1, d, 0.5)) if d > 0 else 1.0
    return PairedTest(n=len(challenger), challenger_successes=int(sum(map(bool, challenger))),
                      champion_successes=int(sum(map(bool, champion))), challenger_only=b, champion_only=c,
                      p_value=p, alpha=alpha)


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than 2 points."""
    n = len(x)
    if n != len(y):
        raise ValueError("pearson_r needs sequences of equal length")
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return math.nan if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def pairwise_ranking_accuracy(predicted: Sequence[float], actual: Sequence[float], min_gap: float = 0.15,
                              tie_tol: float = 0.0) -> tuple[float, int]:
    """Among pairs whose true success rates differ by at least `min_gap`, the fraction the prediction orders
    the same way. Predictions closer than `tie_tol` are a tie and count half (an evaluator that predicts the
    same value for everything scores 0.5, not whatever its rounding noise says). Returns (accuracy, pairs)."""
    hits, pairs = 0.0, 0
    for i, j in combinations(range(len(actual)), 2):
        gap = actual[i] - actual[j]
        if abs(gap) < min_gap:
            continue
        pairs += 1
        pg = predicted[i] - predicted[j]
        hits += 0.5 if abs(pg) <= tie_tol else float((pg > 0) == (gap > 0))
    return (hits / pairs if pairs else math.nan), pairs
