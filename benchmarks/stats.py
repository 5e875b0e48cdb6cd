"""Small statistics for paired benchmark runs: the mean of per-pair ratios with its 95% confidence interval
(Student's t, so a handful of pairs gets the wide interval it deserves) and a one-line spread. Standard
library only."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t, t(0.975; df), for df = 1..30 (the usual table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    """t(0.975; df); beyond the table, the normal quantile with the first Cornish-Fisher terms (error < 0.001)."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two runs")
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    low: float  # 95% confidence interval of the mean (nan with one run)
    high: float
    sd: float  # sample standard deviation (nan with one run)
    median: float
    smallest: float
    largest: float

    def interval(self, digits: int = 3) -> str:
        """'0.981x [0.962, 1.000] (95% CI, n=6)'."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}x (one run: no interval)"
        return f"{self.mean:.{digits}f}x [{self.low:.{digits}f}, {self.high:.{digits}f}] (95% CI, n={self.n})"

    def spread(self, digits: int = 3) -> str:
        """'median 0.98, sd 0.02, range 0.95-1.01'."""
        sd = f"sd {self.sd:.{digits}f}, " if self.n >= 2 else ""
        return f"median {self.median:.{digits}f}, {sd}range {self.smallest:.{digits}f}-{self.largest:.{digits}f}"


def estimate(values: list[float]) -> Estimate:
    """The mean of `values` with a t-based 95% confidence interval (they are taken as independent draws:
    for paired ratios, one per pair)."""
    if not values:
        raise ValueError("no values")
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        low = high = sd = math.nan
    else:
        sd = statistics.stdev(values)
        half = t975(n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return Estimate(n, mean, low, high, sd, statistics.median(values), min(values), max(values))


def ratio_estimate(ratios: list[float]) -> Estimate:
    """For ratios (one per pair): the geometric mean with the t-interval taken on their logarithms, so the
    interval is never negative and 0.9x and 1.1x weigh alike; median, sd and range are of the ratios."""
    if any(r <= 0 for r in ratios):
        raise ValueError("ratios must be positive")
    logs = estimate([math.log(r) for r in ratios])
    plain = estimate(ratios)
    return Estimate(plain.n, math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high), plain.sd, plain.median,
                    plain.smallest, plain.largest)  # fmt: skip


def cv(values: list[float]) -> float:
    """Coefficient of variation (sd / mean), the run-to-run noise of one side; nan with one run."""
    return statistics.stdev(values) / statistics.fmean(values) if len(values) >= 2 else math.nan
