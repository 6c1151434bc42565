"""Before/after comparison of two evaluations of the same prompts.

Input: the records of ``RUN/eval/before.jsonl`` and ``RUN/eval/after.jsonl`` (one JSON object per
generated summary, see :func:`load_eval_records`). Output:

- :func:`comparison_table`: the notebook's table (query, response_before, response_after,
  reward_before, reward_after, reward_diff, sorted by reward_diff descending) plus toxicity columns;
- :func:`headline`: the measures of DESIGN.md ("Measures") with paired bootstrap intervals over
  prompts, the notebook's percentage improvement, and a one-line ``verdict``;
- :func:`write_comparison`: ``comparison.csv``, ``comparison.json`` (the table) and ``compare.json``
  (the headline) in one folder.

Toxicity changes are relative (``-23.1%`` = the mean is 23.1% lower after); ROUGE differences are
in points (F-measure x 100); a change whose interval contains 0 is called "no significant change".
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError
from .stats import (
    expected_max,
    paired_bootstrap_diff,
    paired_bootstrap_reduction,
    percentage_improvement,
    prob_any_toxic,
    summarize,
)

REQUIRED_KEYS = ("index", "sample", "response", "reward", "toxicity")
TABLE_COLUMNS = (
    "query",
    "response_before",
    "response_after",
    "reward_before",
    "reward_after",
    "reward_diff",
    "toxicity_before",
    "toxicity_after",
    "judge_toxicity_before",
    "judge_toxicity_after",
    "index",
    "sample",
    "id",
)
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}

Pair = tuple[dict, dict]


# --------------------------------------------------------------------------------------------- io


def load_eval_records(path) -> list[dict]:
    """The records of an evaluation JSON Lines file, in file order.

    Blank lines are skipped. Since evaluations append incrementally, an unreadable *last* line (an
    interrupted write) is dropped with a warning; an unreadable line elsewhere, or a record lacking
    one of index/sample/response/reward/toxicity, is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no evaluation records at {path}: run the evaluation first (it writes RUN/eval/<name>.jsonl)")
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if pos == len(numbered) - 1:
                warnings.warn(f"{path}:{lineno}: incomplete last record (an interrupted evaluation?) skipped")
                break
            raise DataError(f"{path}:{lineno} is not valid JSON ({e.msg}): re-run the evaluation") from e
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno} is not a JSON object: re-run the evaluation")
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise DataError(f"{path}:{lineno} lacks {', '.join(missing)}: not an evaluation record of detoxrl")
        records.append(rec)
    return records


def _key(rec: dict) -> tuple[int, int]:
    return int(rec["index"]), int(rec.get("sample") or 0)


def _index_records(records: Sequence[dict], name: str) -> dict:
    out = {}
    for rec in records:
        k = _key(rec)
        if k in out:
            raise DataError(
                f"the {name} evaluation holds two records for index={k[0]}, sample={k[1]}: "
                "re-run it into an empty eval folder"
            )
        out[k] = rec
    return out


def _shape(keys) -> str:
    per_prompt = Counter(i for i, _ in keys)
    ks = sorted(set(per_prompt.values()))
    k = str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
    return f"{len(per_prompt)} prompts x {k} samples"


def pair_records(before: Sequence[dict], after: Sequence[dict]) -> list[Pair]:
    """Match before and after records on (index, sample); pairs sorted by (index, sample).

    Both evaluations must cover the same prompts: different (index, sample) sets, or a different
    ``id`` at the same index, raise :class:`DataError`."""
    b = _index_records(before, "before")
    a = _index_records(after, "after")
    hint = "evaluate both with the same --num-samples and data"
    if set(b) != set(a):
        only_b = sorted(set(b) - set(a))
        only_a = sorted(set(a) - set(b))
        detail = [f"before: {_shape(b)}", f"after: {_shape(a)}"]
        if only_b:
            detail.append(f"{len(only_b)} only in before, first index={only_b[0][0]} sample={only_b[0][1]}")
        if only_a:
            detail.append(f"{len(only_a)} only in after, first index={only_a[0][0]} sample={only_a[0][1]}")
        raise DataError(f"before and after were evaluated on different prompts ({'; '.join(detail)}); {hint}")
    for k in sorted(b):
        id_b, id_a = b[k].get("id"), a[k].get("id")
        if id_b != id_a:
            raise DataError(
                f"before and after were evaluated on different prompts (index {k[0]}: id {id_b!r} before, "
                f"{id_a!r} after); {hint}"
            )
    if not b:
        raise DataError("the evaluations hold no records: run the evaluation first")
    return [(b[k], a[k]) for k in sorted(b)]


# ------------------------------------------------------------------------------------------ table


def comparison_table(pairs: Sequence[Pair]) -> list[dict]:
    """The notebook's compare table, one row per pair, sorted by reward_diff (after - before)
    descending; ties keep (index, sample) order. Columns: :data:`TABLE_COLUMNS`."""
    rows = []
    for before, after in pairs:
        rb, ra = float(before["reward"]), float(after["reward"])
        rows.append(
            {
                "query": before.get("dialogue") or before.get("prompt") or "",
                "response_before": before["response"],
                "response_after": after["response"],
                "reward_before": rb,
                "reward_after": ra,
                "reward_diff": ra - rb,
                "toxicity_before": before.get("toxicity"),
                "toxicity_after": after.get("toxicity"),
                "judge_toxicity_before": before.get("judge_toxicity"),
                "judge_toxicity_after": after.get("judge_toxicity"),
                "index": before.get("index"),
                "sample": before.get("sample"),
                "id": before.get("id"),
            }
        )
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["reward_diff"])  # stable
    return [rows[i] for i in order]


# --------------------------------------------------------------------------------------- headline


def _valid(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _paired_values(pairs: Sequence[Pair], key: str):
    """before, after, prompt groups over the pairs where both sides have a finite ``key``."""
    b, a, g = [], [], []
    for before, after in pairs:
        vb, va = before.get(key), after.get(key)
        if _valid(vb) and _valid(va):
            b.append(float(vb))
            a.append(float(va))
            g.append(int(before["index"]))
    return np.asarray(b), np.asarray(a), np.asarray(g, dtype=np.int64)


def _describe(values) -> dict:
    s = summarize(values)
    s.pop("ratio")  # "fraction >= 0.5" only means something for probabilities
    return s


def _by_prompt(values: np.ndarray, groups: np.ndarray):
    """[P, k] array when every prompt has the same number k of values, else None."""
    if values.size == 0:
        return None
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() != counts.max():
        return None
    order = np.argsort(inv, kind="stable")
    return values[order].reshape(len(uniq), int(counts[0]))


def _toxicity_block(pairs, key, boot) -> dict | None:
    b, a, g = _paired_values(pairs, key)
    if b.size == 0:
        return None
    sb, sa = summarize(b), summarize(a)
    block = {
        "before": sb,
        "after": sa,
        "reduction": paired_bootstrap_reduction(b, a, groups=g, **boot),
        "percentage_improvement": percentage_improvement(sb["mean"], sa["mean"], sb["std"], sa["std"]),
    }
    pb, pa = _by_prompt(b, g), _by_prompt(a, g)
    if pb is not None and pa is not None and pb.shape[1] > 1:
        block["samples_per_prompt"] = int(pb.shape[1])
        block["expected_max"] = {"before": expected_max(pb), "after": expected_max(pa)}
        block["prob_any_toxic"] = {"before": prob_any_toxic(pb), "after": prob_any_toxic(pa)}
    return block


def _diff_block(pairs, key, boot, scale: float = 1.0) -> dict | None:
    b, a, g = _paired_values(pairs, key)
    if b.size == 0:
        return None
    d = paired_bootstrap_diff(b * scale, a * scale, groups=g, **boot)
    return {"before": _describe(b * scale), "after": _describe(a * scale), "diff": d}


def _significant(low, high) -> bool:
    return low is not None and high is not None and not (low <= 0.0 <= high)


def _signed(x: float, digits: int) -> str:
    """``+1.2`` / ``-1.2``; rounds first so that -0.04 prints as +0.0, not -0.0."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _fmt_reduction(name: str, r: dict, ci: float) -> str:
    if r is None or r["reduction"] is None:
        return f"{name}: undefined (mean before is 0)"
    # Report the change of the mean (after vs before): -reduction, interval in ascending order.
    change, lo, hi = -100 * r["reduction"], -100 * r["high"], -100 * r["low"]
    body = f"{_signed(change, 1)}% [{ci:.0%} CI {_signed(lo, 1)}%, {_signed(hi, 1)}%] (n={r['n']})"
    if _significant(r["low"], r["high"]):
        return f"{name} {body}"
    return f"{name}: no significant change ({body})"


def _fmt_diff(name: str, d: dict, ci: float, unit: str, digits: int) -> str:
    lo, hi = _signed(d["low"], digits), _signed(d["high"], digits)
    body = f"{_signed(d['diff'], digits)}{unit} [{ci:.0%} CI {lo}, {hi}] (n={d['n']})"
    if _significant(d["low"], d["high"]):
        return f"{name} {body}"
    return f"{name}: no significant change ({body})"


def headline(pairs: Sequence[Pair], n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """The before/after measures of DESIGN.md, with paired bootstrap intervals over prompts.

    Keys: ``n`` (pairs), ``prompts``, ``samples_per_prompt`` (None when it varies), ``bootstrap``,
    ``toxicity`` and ``judge_toxicity`` (before/after :func:`summarize`, ``reduction`` with CI,
    notebook ``percentage_improvement``, and with k > 1 samples ``expected_max``/``prob_any_toxic``;
    None where no record has the value), ``reward`` (before/after, ``diff`` with CI), ``rouge``
    (per ROUGE key: before/after in points and ``diff`` in points with CI; None without
    references), ``faithfulness``, ``length_tokens`` and ``verdict`` (one line)."""
    if not pairs:
        raise DataError("nothing to compare: the evaluations hold no paired records")
    boot = {"n_boot": n_boot, "seed": seed, "ci": ci}
    groups = [int(b["index"]) for b, _ in pairs]
    per_prompt = Counter(groups)
    ks = set(per_prompt.values())
    out = {
        "n": len(pairs),
        "prompts": len(per_prompt),
        "samples_per_prompt": ks.pop() if len(ks) == 1 else None,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "ci": ci, "resampled": "prompts (paired)"},
        "judge_toxicity": _toxicity_block(pairs, "judge_toxicity", boot),
        "toxicity": _toxicity_block(pairs, "toxicity", boot),
        "reward": _diff_block(pairs, "reward", boot),
    }
    rouge = {k: _diff_block(pairs, k, boot, scale=100.0) for k in ROUGE_KEYS}
    out["rouge"] = rouge if any(v is not None for v in rouge.values()) else None
    out["faithfulness"] = _diff_block(pairs, "faithfulness", boot)
    out["length_tokens"] = _diff_block(pairs, "length_tokens", boot)

    parts = []
    if out["judge_toxicity"] is not None:
        parts.append(_fmt_reduction("judge toxicity", out["judge_toxicity"]["reduction"], ci))
    if out["toxicity"] is not None:
        parts.append(_fmt_reduction("reward-model toxicity", out["toxicity"]["reduction"], ci))
    if out["rouge"] is not None and out["rouge"]["rougeL"] is not None:
        parts.append(_fmt_diff("ROUGE-L", out["rouge"]["rougeL"]["diff"], ci, " points", 1))
    if out["faithfulness"] is not None:
        parts.append(_fmt_diff("faithfulness", out["faithfulness"]["diff"], ci, "", 3))
    out["verdict"] = ", ".join(parts) if parts else "no measures to compare"
    return out


# ------------------------------------------------------------------------------------------ write


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_comparison(pairs: Sequence[Pair], out_dir, **headline_kwargs) -> dict:
    """Write ``comparison.csv`` and ``comparison.json`` (the table) and ``compare.json`` (the
    headline) into ``out_dir`` (created if needed); return the headline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _json_safe(comparison_table(pairs))
    head = _json_safe(headline(pairs, **headline_kwargs))
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        w.writeheader()
        w.writerows(table)
    (out_dir / "comparison.json").write_text(json.dumps(table, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    (out_dir / "compare.json").write_text(json.dumps(head, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return head


def compare_files(before_path, after_path, out_dir, **headline_kwargs) -> dict:
    """Load two evaluation JSON Lines files, pair them and :func:`write_comparison`."""
    pairs = pair_records(load_eval_records(before_path), load_eval_records(after_path))
    return write_comparison(pairs, out_dir, **headline_kwargs)


def format_headline(head: dict) -> Iterable[str]:
    """A few human-readable lines of a headline (for the command line)."""
    lines = []
    for key, name in (("judge_toxicity", "judge toxicity"), ("toxicity", "reward-model toxicity")):
        blk = head.get(key)
        if not blk:
            continue
        b, a = blk["before"], blk["after"]
        pi = blk["percentage_improvement"]
        pim = "n/a" if pi["mean"] is None else f"{pi['mean']:.2f}%"
        lines.append(
            f"{name}: mean {b['mean']:.4f} -> {a['mean']:.4f}, std {b['std']:.4f} -> {a['std']:.4f}, "
            f"p95 {b['p95']:.4f} -> {a['p95']:.4f}, >=0.5 {b['ratio']:.1%} -> {a['ratio']:.1%} "
            f"(notebook's improvement of the mean: {pim})"
        )
    lines.append("verdict: " + head["verdict"])
    return lines
