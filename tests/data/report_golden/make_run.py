"""Writes the fixed run folder of tests/test_report_golden.py (``run/``); run it only to change the fixture.

The files it writes are committed: the golden reports must not depend on the random generator or on the
bootstrap of the machine that runs the tests. ``python tests/data/report_golden/make_run.py`` (from the
repository root, with ``src`` on the path) rewrites ``run/``; then regenerate the golden pages (see the test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from detoxrl.compare import compare_run
from detoxrl.config import load_config

HERE = Path(__file__).parent
N_PROMPTS = 12
N_STEPS = 8
TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
JUDGES = ["packaged:profanity-check", "packaged:hatesonar#hate_speech"]


def _metrics(rng: np.random.Generator) -> list[dict]:
    rows, kl_coef = [], 0.2
    for step in range(1, N_STEPS + 1):
        t = step / N_STEPS
        kl = round(0.05 + 2.5 * t + rng.normal(0, 0.1), 6)
        kl_coef = round(kl_coef * (1 + 0.02 * (kl / 6.0 - 1)), 6)
        gen, score, upd = (round(x, 4) for x in (3.1 + rng.normal(0, 0.1), 0.4 + rng.normal(0, 0.02), 2.2))
        rows.append({
            "step": step, "objective/kl": kl, "objective/kl_k3": round(0.9 * kl, 6), "objective/kl_coef": kl_coef,
            "objective/entropy": round(38.0 - 4 * t, 4), "ppo/returns/mean": round(-0.6 + 0.5 * t, 4),
            "ppo/policy/advantages_mean": 0.0, "ppo/loss/policy": round(-0.01 * t, 5),
            "ppo/loss/value": round(0.9 * (1 - t) + 0.05, 4), "ppo/policy/clipfrac": round(0.02 + 0.1 * t, 4),
            "ppo/val/clipfrac": round(0.3 - 0.1 * t, 4), "ppo/policy/approxkl": round(0.001 + 0.01 * t, 5),
            "ppo/skipped_minibatches": 1 if step == 5 else 0, "env/reward_mean": round(1.6 + 0.9 * t, 4),
            "env/reward_std": round(0.8 - 0.2 * t, 4), "env/response_length_mean": round(31 - 3 * t, 3),
            "time/step_s": round(gen + score + upd + 0.3, 4), "time/generate_s": gen, "time/score_s": score,
            "time/update_s": upd,
        })
    return rows


def _records(rng: np.random.Generator, after: bool, samples: int) -> list[dict]:
    out = []
    for i in range(N_PROMPTS):
        dialogue = f"#Person1#: Hi, is table {i} free? <i>&</i>\n#Person2#: Yes, sit down | please."
        for s in range(samples):
            tox = round(float(rng.beta(1.2, 45 if after else 20)), 6)
            judges = {spec: round(float(rng.beta(1.0, 30 if after else 16)), 6) for spec in JUDGES}
            response = f"#Person1# asks #Person2# about table {i}."
            if i == 3 and s == 0:  # markup from the run must be escaped on both pages
                response = "<script>alert('x')</script> Tom & Jerry" if after else "They argue & shout."
                tox = 0.0005 if after else 0.31
            out.append({
                "index": i, "id": f"test_{i}", "sample": s, "prompt": TEMPLATE.format(dialogue=dialogue),
                "dialogue": dialogue, "reference": f"Person1 greets Person2 ({i}).", "response": response,
                "length_tokens": int(rng.integers(15, 40)), "decoding": "sampled" if samples > 1 else "greedy",
                "reward": round(3.0 - 10 * tox + float(rng.normal(0, 0.2)), 6), "toxicity": tox,
                "judge_toxicity": judges[JUDGES[0]], "judges": judges,
                "rouge1": round(float(rng.uniform(0.3, 0.5)), 6), "rouge2": round(float(rng.uniform(0.1, 0.2)), 6),
                "rougeL": round(float(rng.uniform(0.25, 0.45)), 6),
                "faithfulness": round(float(rng.uniform(0.5, 0.8)), 6),
                "kl_k1": round(float(rng.uniform(0.0, 3.0)) if after else 0.0, 6),
            })
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    run = HERE / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "eval").mkdir(parents=True)
    cfg = load_config(preset="offline", overrides={
        "data": {"template": TEMPLATE, "min_dialogue_toxicity": 0.1},
        "ppo": {"steps": 10},
        "run": {"output_dir": "runs/golden"},
        "evaluation": {"judge_model": JUDGES, "num_samples": N_PROMPTS, "samples_per_prompt": 2},
    })
    cfg.save_yaml(run / "config.yaml")
    rng = np.random.default_rng(12)
    _write_jsonl(run / "metrics.jsonl", _metrics(rng))
    for name, after, samples in (("before", False, 1), ("after", True, 1),
                                 ("before-sampled", False, 2), ("after-sampled", True, 2)):
        _write_jsonl(run / "eval" / f"{name}.jsonl", _records(rng, after, samples))
    compare_run(run / "eval", n_boot=200)
    for extra in ("comparison.csv", "comparison-sampled.csv", "comparison-sampled.json"):  # the report reads none
        (run / "eval" / extra).unlink()


if __name__ == "__main__":
    main()
