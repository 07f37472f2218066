"""Paired statistics of two methods on the same seeds and test cases.

``paired(a, b)`` takes per-case scores ``{seed: {case: value}}`` of two
methods and compares them on the seeds and cases both have:

* the mean paired difference (a - b) over seeds and cases;
* its 95 % confidence interval from a hierarchical bootstrap: resample the
  seeds with replacement, then within each drawn seed the test cases with
  replacement (both sources of variation a rerun of the study would see),
  the percentile interval of the resampled means;
* a Wilcoxon signed-rank test (scipy, two-sided) on the per-case
  differences averaged over seeds (n = the number of cases);
* the seed spread of each method: std (ddof=1) and min..max of the per-seed
  means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Scores = dict[int, dict[str, float]]   # seed -> case -> score


@dataclass(frozen=True)
class Paired:
    mean: float                 # mean of a - b over the common seeds and cases
    ci: tuple[float, float]     # 95 % hierarchical-bootstrap interval
    p_wilcoxon: float | None    # None when every difference is zero or under 2 cases
    n_seeds: int
    n_cases: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci[0] > 0 or self.ci[1] < 0


def difference_matrix(a: Scores, b: Scores) -> tuple[np.ndarray, list[int], list[str]]:
    """``seeds x cases`` array of a - b on the seeds and cases both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two methods share no seed")
    cases = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)))
    if not cases:
        raise ValueError("the two methods share no test case")
    d = np.array([[a[s][c] - b[s][c] for c in cases] for s in seeds], dtype=float)
    return d, seeds, cases


def hierarchical_bootstrap(d: np.ndarray, n_boot: int = 10000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` (seeds x cases) under
    resampling seeds, then cases within each drawn seed."""
    rng = np.random.default_rng(seed)
    n_s, n_c = d.shape
    si = rng.integers(0, n_s, size=(n_boot, n_s))
    ci = rng.integers(0, n_c, size=(n_boot, n_s, n_c))
    means = d[si[..., None], ci].mean(axis=(1, 2))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: Scores, b: Scores, n_boot: int = 10000, seed: int = 0) -> Paired:
    d, seeds, cases = difference_matrix(a, b)
    per_case = d.mean(axis=0)
    p = None
    if len(cases) >= 2 and np.any(per_case != 0):
        p = float(sps.wilcoxon(per_case).pvalue)
    return Paired(float(d.mean()), hierarchical_bootstrap(d, n_boot, seed), p, len(seeds), len(cases))


def seed_spread(scores: Scores) -> tuple[float | None, float, float]:
    """Std (ddof=1; None for one seed), min and max of the per-seed means."""
    means = [float(np.mean(list(v.values()))) for v in scores.values()]
    std = float(np.std(means, ddof=1)) if len(means) > 1 else None
    return std, min(means), max(means)
