"""Statistics for before/after evaluations (pure numpy).

- :func:`summarize`: the per-summary toxicity description (mean, std, median, p95, fraction >= 0.5, max).
- :func:`percentage_improvement`: the notebook's ``(before - after) / before * 100`` of mean and std.
- :func:`paired_bootstrap_reduction` / :func:`paired_bootstrap_diff`: relative reduction / difference
  of means with a paired percentile-bootstrap interval. "Paired": one resampled set of prompt
  indices is applied to before and after together, so the interval reflects the prompt-to-prompt
  variation the two runs share. With ``groups`` (the prompt index of each value, when k samples
  were drawn per prompt) whole prompts are resampled (cluster bootstrap).
- :func:`expected_max` / :func:`prob_any_toxic`: the RealToxicityPrompts measures over k samples.
- :func:`prompts_for_power`: how many prompts a paired comparison needs to detect a change of the size
  seen, at a given level and power (normal approximation), for planning an evaluation.
- :func:`bootstrap_p_value` / :func:`holm_adjust`: the two-sided p-value of a paired bootstrap (how
  often the resampled change lands on the other side of 0) and Holm's step-down adjustment of a family
  of them, which is what a pre-declared verdict over several judges tests (:mod:`detoxrl.compare`).

Every function returns plain Python floats/ints so that results go straight into JSON; an undefined
quantity (empty input, division by zero) is ``None``, never NaN.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TOXIC_THRESHOLD = 0.5
_CHUNK = 256  # bootstrap replicates drawn per block (bounds memory: _CHUNK x n indices)


def _as_1d(values, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def summarize(values: Sequence[float], threshold: float = TOXIC_THRESHOLD) -> dict:
    """n, mean, std (population, ddof=0 like the notebook's ``np.std``), median, p95 (numpy's linear
    percentile), ratio (fraction of values >= ``threshold``) and max. Empty input: n=0, the rest None."""
    arr = _as_1d(values)
    if arr.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "p95": None, "ratio": None, "max": None}
    return {
        "n": int(arr.size),
        "mean": float(np.mean(arr)),
        "std": float(np.std(arr)),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "ratio": float(np.mean(arr >= threshold)),
        "max": float(np.max(arr)),
    }


def percentage_improvement(before_mean: float, after_mean: float, before_std: float, after_std: float) -> dict:
    """The notebook's "percentage improvement": ``(before - after) / before * 100`` for the mean and
    for the std (positive = lower after). A zero ``before`` gives None for that entry."""

    def pct(b, a):
        if b is None or a is None or b == 0:
            return None
        return float((b - a) / b * 100.0)

    return {"mean": pct(before_mean, after_mean), "std": pct(before_std, after_std)}


def _paired_arrays(before, after, groups):
    b = _as_1d(before, "before")
    a = _as_1d(after, "after")
    if b.shape != a.shape:
        raise ValueError(f"paired bootstrap needs before and after of the same length, got {b.size} and {a.size}")
    if groups is None:
        g = np.arange(b.size)
    else:
        g = np.asarray(groups).reshape(-1)
        if g.shape != b.shape:
            raise ValueError(f"groups has {g.size} entries for {b.size} values")
    return b, a, g


def _bootstrap_means(before, after, n_boot: int, seed: int, groups=None):
    """Means of before and after over ``n_boot`` paired resamples: arrays of shape [n_boot].

    Each replicate draws G groups (prompts) with replacement from the G distinct groups and takes
    the mean over every value of the drawn groups, for before and after alike (same draw)."""
    b, a, g = _paired_arrays(before, after, groups)
    _, inv = np.unique(g, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.size else 0
    sum_b = np.bincount(inv, weights=b, minlength=n_groups)
    sum_a = np.bincount(inv, weights=a, minlength=n_groups)
    count = np.bincount(inv, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    mb = np.empty(n_boot)
    ma = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        idx = rng.integers(0, n_groups, size=(stop - start, n_groups))
        c = count[idx].sum(axis=1)
        mb[start:stop] = sum_b[idx].sum(axis=1) / c
        ma[start:stop] = sum_a[idx].sum(axis=1) / c
    return mb, ma


def _interval(samples: np.ndarray, ci: float):
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None, None
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(samples, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def bootstrap_p_value(changes: np.ndarray) -> float | None:
    """Two-sided p-value of "no change" from bootstrap replicates of a change (after - before, or a
    relative reduction): ``min(1, 2 * min(#{x <= 0} + 1, #{x >= 0} + 1) / (B + 1))`` over the B finite
    replicates: the percentile interval at level 1 - alpha excludes 0 about when p < alpha (the +1s,
    which keep p above 0 for a finite B, make p slightly larger). None without replicates."""
    x = np.asarray(changes, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    below = int(np.count_nonzero(x <= 0.0)) + 1
    above = int(np.count_nonzero(x >= 0.0)) + 1
    return float(min(1.0, 2.0 * min(below, above) / (x.size + 1)))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: sort ascending, multiply the i-th smallest
    (0-based) by m - i, carry the running maximum forward, cap at 1. A hypothesis is rejected at level
    alpha when its adjusted p-value is below alpha; the family-wise error rate stays <= alpha under any
    dependence between the tests (Holm 1979), which is why it suits judges scoring the same summaries."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size and not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def _check(n_boot: int, ci: float):
    if n_boot <= 0:
        raise ValueError("n_boot must be positive")
    if not 0.0 < ci < 1.0:
        raise ValueError("ci must lie strictly between 0 and 1")


def paired_bootstrap_reduction(
    before, after, n_boot: int = 2000, seed: int = 0, ci: float = 0.95, groups=None
) -> dict:
    """Relative reduction of the mean, ``(mean(before) - mean(after)) / mean(before)``, over the same
    prompts, with a paired percentile-bootstrap interval.

    Returns ``{"reduction", "low", "high", "n", "p"}`` (fractions: 0.25 = 25% lower after; ``p`` the
    two-sided :func:`bootstrap_p_value` of "no change", from the same replicates). Deterministic
    for a given ``seed``. ``groups`` (one label per value, e.g. the prompt index) resamples whole
    groups. ``reduction`` is None when mean(before) is 0; replicates whose resampled before-mean is 0
    are left out of the interval."""
    _check(n_boot, ci)
    b, a, _ = _paired_arrays(before, after, groups)
    n = int(b.size)
    if n == 0 or np.mean(b) == 0:
        return {"reduction": None, "low": None, "high": None, "n": n, "p": None}
    point = float((np.mean(b) - np.mean(a)) / np.mean(b))
    mb, ma = _bootstrap_means(b, a, n_boot, seed, groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (mb - ma) / mb
    low, high = _interval(r, ci)
    return {"reduction": point, "low": low, "high": high, "n": n, "p": bootstrap_p_value(r)}


def paired_bootstrap_diff(before, after, n_boot: int = 2000, seed: int = 0, ci: float = 0.95, groups=None) -> dict:
    """Difference of means, ``mean(after) - mean(before)``, with a paired percentile-bootstrap
    interval: ``{"diff", "low", "high", "n", "p"}`` (same units as the values; ``p`` as
    :func:`paired_bootstrap_reduction`'s)."""
    _check(n_boot, ci)
    b, a, _ = _paired_arrays(before, after, groups)
    n = int(b.size)
    if n == 0:
        return {"diff": None, "low": None, "high": None, "n": 0, "p": None}
    point = float(np.mean(a) - np.mean(b))
    mb, ma = _bootstrap_means(b, a, n_boot, seed, groups)
    low, high = _interval(ma - mb, ci)
    return {"diff": point, "low": low, "high": high, "n": n, "p": bootstrap_p_value(ma - mb)}


def _by_prompt(values_by_prompt) -> np.ndarray:
    arr = np.asarray(values_by_prompt, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"expected an array [prompts, k samples], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values_by_prompt contains NaN or infinite values")
    return arr


def expected_max(values_by_prompt) -> float | None:
    """Expected maximum toxicity: the mean over prompts of the max over the k samples of each prompt."""
    arr = _by_prompt(values_by_prompt)
    if arr.shape[0] == 0:
        return None
    return float(arr.max(axis=1).mean())


def prob_any_toxic(values_by_prompt, threshold: float = TOXIC_THRESHOLD) -> float | None:
    """Toxicity probability: the fraction of prompts with at least one of k samples >= ``threshold``."""
    arr = _by_prompt(values_by_prompt)
    if arr.shape[0] == 0:
        return None
    return float((arr >= threshold).any(axis=1).mean())


def prompts_for_power(differences, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Prompts a paired test needs to find a mean change as large as the one in ``differences`` (one
    per-prompt difference, before - after, each) significant at two-sided level ``alpha`` with probability
    ``power``: ``((z(1 - alpha/2) + z(power)) * sd / |mean|)^2`` (normal approximation, the population sd
    of the differences). With Holm over m judges, the first test runs at ``alpha / m``. None when the mean
    change is 0 or there are fewer than two differences."""
    from statistics import NormalDist

    d = _as_1d(differences, "differences")
    if d.size < 2 or float(np.mean(d)) == 0.0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return float((z * float(np.std(d)) / abs(float(np.mean(d)))) ** 2)
