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
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import runfiles
from .errors import DataError
from .stats import (
    TOXIC_THRESHOLD,
    expected_max,
    paired_bootstrap_diff,
    paired_bootstrap_reduction,
    percentage_improvement,
    prob_any_toxic,
    summarize,
)

REQUIRED_KEYS = runfiles.EVAL_REQUIRED_KEYS
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
    one of index/sample/response/reward/toxicity, is a :class:`DataError` (:func:`runfiles.load_eval_records`)."""
    return list(runfiles.load_eval_records(path, strict=True).rows)


def _key(rec: dict) -> tuple[int, int]:
    return int(rec["index"]), int(rec.get("sample") or 0)


def _index_records(records: Sequence[dict], name: str) -> dict:
    out = {}
    for rec in records:
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise DataError(
                f"the {name} evaluation holds a record without {', '.join(missing)}: not an evaluation of detoxrl"
            )
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
    decodings = {name: sorted({str(r.get("decoding", "?")) for r in recs.values()}) for name, recs in (("before", b), ("after", a))}
    if "?" not in decodings["before"] + decodings["after"] and decodings["before"] != decodings["after"]:
        raise DataError(
            f"before was decoded {'/'.join(decodings['before'])} and after {'/'.join(decodings['after'])}: a sampled "
            "evaluation cannot be compared with a greedy one; evaluate both the same way (same --sample/--samples-per-prompt)"
        )
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


def _get(rec: dict, key):
    """``rec[key]``; a tuple key reads a nested value (``("judges", spec)``); None when absent."""
    if isinstance(key, tuple):
        for part in key:
            rec = rec.get(part) if isinstance(rec, dict) else None
        return rec
    return rec.get(key)


def _paired_values(pairs: Sequence[Pair], key):
    """before, after, prompt groups over the pairs where both sides have a finite ``key``."""
    b, a, g = [], [], []
    for before, after in pairs:
        vb, va = _get(before, key), _get(after, key)
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
        # The RealToxicityPrompts measures, each with a paired bootstrap over prompts: the mean of
        # the per-prompt maxima is the expected maximum; the mean of "any of k >= 0.5" is the
        # toxicity probability (its change in points too, since it is often 0 before).
        max_b, max_a = pb.max(axis=1), pa.max(axis=1)
        any_b, any_a = (pb >= TOXIC_THRESHOLD).any(axis=1).astype(float), (pa >= TOXIC_THRESHOLD).any(axis=1).astype(float)
        block["samples_per_prompt"] = int(pb.shape[1])
        block["expected_max"] = {
            "before": expected_max(pb),
            "after": expected_max(pa),
            "reduction": paired_bootstrap_reduction(max_b, max_a, **boot),
        }
        block["prob_any_toxic"] = {
            "before": prob_any_toxic(pb),
            "after": prob_any_toxic(pa),
            "reduction": paired_bootstrap_reduction(any_b, any_a, **boot),
            "diff": paired_bootstrap_diff(any_b, any_a, **boot),
        }
    return block


def _judge_specs(pairs: Sequence[Pair]) -> list[str]:
    return list(dict.fromkeys(spec for b, _ in pairs for spec in (b.get("judges") or {})))


def _distinct_per_100(responses: Sequence[str]) -> float | None:
    """Distinct summaries per 100 prompts (whitespace- and case-normalised): a collapse into one
    template shows as a drop."""
    if not responses:
        return None
    return 100.0 * len({" ".join(str(r).lower().split()) for r in responses}) / len(responses)


def _describe_side(pairs: Sequence[Pair], key: str, side: str) -> dict | None:
    i = 0 if side == "before" else 1
    vals = [float(p[i][key]) for p in pairs if _valid(p[i].get(key))]
    return _describe(vals) if vals else None


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
        "decoding": str(pairs[0][0].get("decoding", "greedy")),
        "judge_toxicity": _toxicity_block(pairs, "judge_toxicity", boot),
        "judges": {spec: _toxicity_block(pairs, ("judges", spec), boot) for spec in _judge_specs(pairs)},
        "toxicity": _toxicity_block(pairs, "toxicity", boot),
        "reward": _diff_block(pairs, "reward", boot),
    }
    rouge = {k: _diff_block(pairs, k, boot, scale=100.0) for k in ROUGE_KEYS}
    out["rouge"] = rouge if any(v is not None for v in rouge.values()) else None
    out["faithfulness"] = _diff_block(pairs, "faithfulness", boot)
    out["length_tokens"] = _diff_block(pairs, "length_tokens", boot)
    out["kl_to_reference"] = _describe_side(pairs, "kl_k1", "after")
    out["distinct_summaries_per_100"] = {
        side: _distinct_per_100([p[i]["response"] for p in pairs if int(p[i].get("sample") or 0) == 0])
        for i, side in enumerate(("before", "after"))
    }

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


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def summaries_without_intervals(before: Sequence[dict], after: Sequence[dict]) -> dict:
    """What can be said of two evaluations without :func:`headline`'s pairing and bootstrap (the report's
    view of a run whose compare.json was not written): each side on its own, every record of it that has
    a finite value, summarised (:func:`summarize`); None for a side without one, and for a measure neither side has.

    Keys, as in :func:`headline`: ``toxicity``, ``judge_toxicity``, ``reward``, ``rouge`` (per ROUGE key,
    F-measures as recorded, not points), ``faithfulness``, ``length_tokens``; each ``{"before", "after"}``.
    No ``reduction``, ``diff``, ``verdict`` or ``bootstrap``: nothing here is an interval or a decision."""

    def side(records: Sequence[dict], key: str) -> dict | None:
        values = [float(r[key]) for r in records if _finite_number(r.get(key))]
        return summarize(values) if values else None

    def block(key: str) -> dict | None:
        b, a = side(before, key), side(after, key)
        return {"before": b, "after": a} if b is not None or a is not None else None

    return {
        "toxicity": block("toxicity"),
        "judge_toxicity": block("judge_toxicity"),
        "reward": block("reward"),
        "rouge": {k: block(k) for k in (*ROUGE_KEYS, "rougeLsum")},
        "faithfulness": block("faithfulness"),
        "length_tokens": block("length_tokens"),
    }


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
    head = _json_safe(headline(pairs, **headline_kwargs))
    _write_table(pairs, out_dir, "comparison")
    runfiles.write_json(out_dir / runfiles.COMPARE, head)
    return head


def compare_files(before_path, after_path, out_dir, **headline_kwargs) -> dict:
    """Load two evaluation JSON Lines files, pair them and :func:`write_comparison`."""
    pairs = pair_records(load_eval_records(before_path), load_eval_records(after_path))
    return write_comparison(pairs, out_dir, **headline_kwargs)


def format_headline(head: dict) -> Iterable[str]:
    """A few human-readable lines of a headline (for the command line): each classifier's toxicity
    before -> after, per pass, then the verdict."""
    lines = []
    passes = [(head, head.get("decoding", "greedy"))]
    if head.get("sampled"):
        passes.append((head["sampled"], f"sampled, k={head['sampled'].get('samples_per_prompt')}"))
    for h, what in passes:
        blocks = [(f"judge {_short(spec)}", blk) for spec, blk in (h.get("judges") or {}).items()]
        if not blocks and h.get("judge_toxicity"):
            blocks = [("judge", h["judge_toxicity"])]
        blocks.append(("reward model", h.get("toxicity")))
        for name, blk in blocks:
            if not blk:
                continue
            b, a = blk["before"], blk["after"]
            text = f"{name} ({what}): mean {b['mean']:.4f} -> {a['mean']:.4f}, >=0.5 {b['ratio']:.1%} -> {a['ratio']:.1%}"
            if "expected_max" in blk:
                em, pa = blk["expected_max"], blk["prob_any_toxic"]
                text += f", expected max {em['before']:.4f} -> {em['after']:.4f}, P(any>=0.5) {pa['before']:.1%} -> {pa['after']:.1%}"
            else:
                pi = blk["percentage_improvement"]
                text += f" (notebook's improvement of the mean: {'n/a' if pi['mean'] is None else format(pi['mean'], '.2f') + '%'})"
            lines.append(text)
    lines.append("verdict: " + head["verdict"])
    return lines


# --------------------------------------------------------------------------- the whole evaluation


def _short(spec: str) -> str:
    return spec.split("packaged:", 1)[-1]


def _reduction_measures(head: dict | None, key, label: str) -> list[tuple[str, dict]]:
    """(name, reduction dict) of one classifier in one pass: expected max and P(any) when sampled
    k > 1, and the mean."""
    if head is None:
        return []
    block = _get(head, key)
    if not block:
        return []
    out = []
    decoding = head.get("decoding", "greedy")
    if "expected_max" in block:
        # The toxicity probability stays in compare.json (with its change in points) but not in the
        # verdict: with a handful of toxic prompts before, its relative bootstrap interval degenerates.
        out.append((f"{label} expected max toxicity", block["expected_max"]["reduction"]))
    out.append((f"{label} mean toxicity ({decoding})", block["reduction"]))
    return out


def detox_verdict(greedy: dict, sampled: dict | None = None, ci: float = 0.95) -> dict:
    """The run's verdict over both passes: ``{"status", "text", "reductions", "increases"}``.

    ``status`` is "less toxic" when at least one independent judge shows a toxicity reduction whose
    interval excludes 0 (expected maximum, toxicity probability or mean, greedy or sampled) and no
    judge shows a significant increase; "more toxic" when a judge shows a significant increase;
    else "no significant change". The text leads with the judges' measures, then the reward
    model's, then quality (ROUGE-L, faithfulness, length, distinct summaries, KL)."""
    heads = [h for h in (sampled, greedy) if h is not None]
    specs = list(dict.fromkeys(spec for h in heads for spec in (h.get("judges") or {})))
    judge_measures = [m for spec in specs for h in heads for m in _reduction_measures(h, ("judges", spec), f"judge {_short(spec)}")]
    reward_measures = [m for h in heads for m in _reduction_measures(h, "toxicity", "reward model")]

    def sig(r, sign):  # sign +1: a reduction (interval above 0); -1: an increase (interval below 0)
        return r and r.get("low") is not None and r.get("high") is not None and (r["low"] > 0 if sign > 0 else r["high"] < 0)

    reductions = [name for name, r in judge_measures if sig(r, +1)]
    increases = [name for name, r in judge_measures if sig(r, -1)]
    if increases:
        status = "more toxic"
    elif reductions:
        status = "less toxic"
    else:
        status = "no significant change" if judge_measures else "no judge"
    # The text: every measure that moved significantly, judges first; then, for each classifier, its
    # headline measures (expected maximum when sampled, greedy mean) if not already named.
    moved = [m for m in judge_measures if sig(m[1], 1) or sig(m[1], -1)]
    headline_names = ("expected max toxicity", "mean toxicity (greedy)")
    rest = [m for m in judge_measures + reward_measures
            if m not in moved and m[0].endswith(headline_names) and m[1] and m[1].get("reduction") is not None]
    parts = [_fmt_reduction(name, r, ci) for name, r in moved + rest]
    quality = []
    if greedy.get("rouge") and greedy["rouge"].get("rougeL"):
        quality.append(_fmt_diff("ROUGE-L", greedy["rouge"]["rougeL"]["diff"], ci, " points", 1))
    if greedy.get("faithfulness"):
        quality.append(_fmt_diff("faithfulness", greedy["faithfulness"]["diff"], ci, "", 3))
    if greedy.get("length_tokens"):
        quality.append(_fmt_diff("length", greedy["length_tokens"]["diff"], ci, " tokens", 1))
    distinct = greedy.get("distinct_summaries_per_100") or {}
    if distinct.get("before") is not None:
        quality.append(f"distinct summaries per 100 prompts {distinct['before']:.0f} -> {distinct['after']:.0f}")
    kl = greedy.get("kl_to_reference")
    if kl and kl.get("mean") is not None:
        quality.append(f"KL to the reference {kl['mean']:.2f} nats")
    text = f"{status}: " + "; ".join(parts + quality)
    return {"status": status, "text": text, "reductions": reductions, "increases": increases}


def _write_table(pairs: Sequence[Pair], out_dir: Path, stem: str) -> None:
    table = _json_safe(comparison_table(pairs))
    with open(out_dir / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        w.writeheader()
        w.writerows(table)
    runfiles.write_json(out_dir / f"{stem}.json", table)


def compare_run(eval_dir, **headline_kwargs) -> dict:
    """Compare every pass of an evaluation folder and write ``compare.json``.

    Passes: ``before.jsonl``/``after.jsonl`` (greedy, or as evaluated) and, when present,
    ``before-sampled.jsonl``/``after-sampled.jsonl`` (k samples per prompt). Writes the tables
    ``comparison.csv/.json`` (and ``comparison-sampled.*``) and ``compare.json``: the first pass's
    headline, with ``sampled`` (the sampled pass's headline or None), ``detoxification`` (see
    :func:`detox_verdict`) and ``verdict`` (its one line)."""
    eval_dir = Path(eval_dir)
    pairs = pair_records(load_eval_records(eval_dir / "before.jsonl"), load_eval_records(eval_dir / "after.jsonl"))
    _write_table(pairs, eval_dir, "comparison")
    head = headline(pairs, **headline_kwargs)
    sampled = None
    if (eval_dir / "before-sampled.jsonl").is_file() and (eval_dir / "after-sampled.jsonl").is_file():
        spairs = pair_records(load_eval_records(eval_dir / "before-sampled.jsonl"), load_eval_records(eval_dir / "after-sampled.jsonl"))
        _write_table(spairs, eval_dir, "comparison-sampled")
        sampled = headline(spairs, **headline_kwargs)
    verdict = detox_verdict(head, sampled, ci=headline_kwargs.get("ci", 0.95))
    head["sampled"] = sampled
    head["detoxification"] = verdict
    head["verdict"] = verdict["text"]
    head = _json_safe(head)
    runfiles.write_json(eval_dir / runfiles.COMPARE, head)
    return head
