"""Tests of detoxrl.report: plots, HTML/Markdown content, escaping, and rendering in headless Chromium."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from detoxrl.errors import DetoxError
from detoxrl.report import ALL_PLOTS, TRAINING_PLOTS, select_examples, write_report

N_STEPS = 12
N_RECORDS = 40
TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
EVIL = "<script>alert('x')</script> Tom & Jerry <b>bold</b>"


# --------------------------------------------------------------------------------------------
# A synthetic but realistic run folder
# --------------------------------------------------------------------------------------------


def _metrics(rng: np.random.Generator) -> list[dict]:
    rows = []
    kl_coef = 0.2
    for step in range(1, N_STEPS + 1):
        t = step / N_STEPS
        kl = 0.05 + 2.5 * t + rng.normal(0, 0.1)
        kl_coef *= 1 + 0.02 * (kl / 6.0 - 1)
        gen, score, upd = 3.1 + rng.normal(0, 0.1), 0.4 + rng.normal(0, 0.02), 2.2 + rng.normal(0, 0.1)
        rows.append(
            {
                "step": step,
                "objective/kl": kl,
                "objective/kl_k3": 0.9 * kl,
                "objective/kl_coef": kl_coef,
                "objective/entropy": 38.0 - 4 * t + rng.normal(0, 0.5),
                "ppo/returns/mean": -0.6 + 0.5 * t + rng.normal(0, 0.05),
                "ppo/policy/advantages_mean": float(rng.normal(0, 1e-8)),
                "ppo/loss/policy": float(rng.normal(-0.01, 0.01)),
                "ppo/loss/value": 0.9 * math.exp(-2 * t) + 0.05,
                "ppo/policy/clipfrac": 0.02 + 0.1 * t,
                "ppo/val/clipfrac": 0.3 - 0.1 * t,
                "ppo/policy/approxkl": 0.001 + 0.01 * t,
                "ppo/skipped_minibatches": 1 if step == 7 else 0,
                "env/reward_mean": 1.6 + 0.9 * t + rng.normal(0, 0.08),
                "env/reward_std": 0.8 - 0.2 * t,
                "env/response_length_mean": 31 - 3 * t,
                "time/step_s": gen + score + upd + 0.3,
                "time/generate_s": gen,
                "time/score_s": score,
                "time/update_s": upd,
            }
        )
    return rows


def _records(rng: np.random.Generator, after: bool) -> list[dict]:
    out = []
    for i in range(N_RECORDS):
        tox = float(np.clip(rng.beta(1.2, 25 if not after else 45), 0, 1))
        judge = float(np.clip(rng.beta(1.0, 18 if not after else 28), 0, 1))
        response = f"#Person1# asks #Person2# about item {i}."
        dialogue = f"#Person1#: Hi, is table {i} free? <i>&</i>\n#Person2#: Yes, sit down."
        if i == 3:  # the most improved example carries markup that must be escaped
            response = EVIL if after else "They argue & shout."
            tox = 0.0005 if after else 0.31
        out.append(
            {
                "index": i,
                "id": f"test_{i}",
                "sample": 0,
                "prompt": TEMPLATE.format(dialogue=dialogue),
                "dialogue": dialogue,
                "reference": f"Person1 greets Person2 ({i}).",
                "response": response,
                "length_tokens": int(rng.integers(15, 40)),
                "reward": float(3.0 - 10 * tox + rng.normal(0, 0.2)),
                "toxicity": tox,
                "judge_toxicity": judge,
                "rouge1": float(rng.uniform(0.3, 0.5)),
                "rouge2": float(rng.uniform(0.1, 0.2)),
                "rougeL": float(rng.uniform(0.25, 0.45)),
                "faithfulness": float(rng.uniform(0.5, 0.8)),
            }
        )
    return out


def _summary(values: list[float]) -> dict:
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "ratio": float((v >= 0.5).mean()),
        "max": float(v.max()),
    }


def _tox_block(before: list[dict], after: list[dict], key: str) -> dict:
    b, a = _summary([r[key] for r in before]), _summary([r[key] for r in after])
    red = (b["mean"] - a["mean"]) / b["mean"]
    return {
        "before": b,
        "after": a,
        "reduction": {"reduction": red, "low": red - 0.15, "high": red + 0.12, "n": len(before)},
        "improvement": {"mean": red, "std": (b["std"] - a["std"]) / b["std"]},
    }


def _pair_block(before: list[dict], after: list[dict], key: str) -> dict:
    b = float(np.mean([r[key] for r in before]))
    a = float(np.mean([r[key] for r in after]))
    return {"before": b, "after": a, "diff": a - b, "low": a - b - 0.03, "high": a - b + 0.03}


def verdict_of(run: Path) -> str:
    return json.loads((run / "eval" / "compare.json").read_text(encoding="utf-8"))["verdict"]


def make_run(root: Path, *, compare: bool = True, metrics: list[dict] | None = None) -> Path:
    rng = np.random.default_rng(0)
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    cfg = {
        "preset": "seed",
        "data": {"source": "knkarthick/dialogsum", "split": "train", "min_chars": 200, "max_chars": 1000,
                 "test_fraction": 0.2, "template": TEMPLATE},
        "policy": {"model": "google/flan-t5-base", "dtype": "bfloat16", "lora_r": 32, "lora_alpha": 32,
                   "lora_dropout": 0.05, "lora_target_modules": ["q", "v"]},
        "reward": {"model": "facebook/roberta-hate-speech-dynabench-r4-target", "label": "nothate",
                   "toxic_label": "hate", "input": "response"},
        "generation": {"do_sample": True, "top_k": 0, "top_p": 1.0, "max_new_tokens": 64},
        "ppo": {"steps": N_STEPS, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 1,
                "learning_rate": 1.41e-5, "init_kl_coef": 0.2, "adaptive_kl": True, "target_kl": 6.0},
        "run": {"output_dir": str(run), "seed": 0},
        "evaluation": {"num_samples": N_RECORDS, "do_sample": False, "judge_model": "packaged:profanity-check"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rows = _metrics(rng) if metrics is None else metrics
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    before, after = _records(rng, after=False), _records(rng, after=True)
    for name, recs in (("before", before), ("after", after)):
        (run / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    if compare:
        tox = _tox_block(before, after, "toxicity")
        red = tox["reduction"]
        cmp = {
            "n": N_RECORDS,
            "toxicity": tox,
            "judge_toxicity": _tox_block(before, after, "judge_toxicity"),
            "rouge": {k: _pair_block(before, after, k) for k in ("rouge1", "rouge2", "rougeL")},
            "faithfulness": _pair_block(before, after, "faithfulness"),
            "length": _pair_block(before, after, "length_tokens"),
            "verdict": f"Toxicity down {red['reduction']:.1%} [{red['low']:.1%}, {red['high']:.1%}] "
            "(judge agrees) & ROUGE-L unchanged: detoxified",
        }
        (run / "eval" / "compare.json").write_text(json.dumps(cmp), encoding="utf-8")
        table = []
        for b, a in zip(before, after):
            table.append(
                {
                    "query": b["prompt"],
                    "response_before": b["response"],
                    "response_after": a["response"],
                    "reward_before": b["reward"],
                    "reward_after": a["reward"],
                    "reward_diff": a["reward"] - b["reward"],
                    "toxicity_before": b["toxicity"],
                    "toxicity_after": a["toxicity"],
                    "judge_toxicity_before": b["judge_toxicity"],
                    "judge_toxicity_after": a["judge_toxicity"],
                }
            )
        table.sort(key=lambda r: r["reward_diff"], reverse=True)
        (run / "eval" / "comparison.json").write_text(json.dumps(table), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"))
    return run, write_report(run)


def _rgb(path: Path) -> np.ndarray:
    img = mpimg.imread(str(path))
    return img[..., :3].astype(float) if img.dtype != np.uint8 else img[..., :3].astype(float) / 255.0


# --------------------------------------------------------------------------------------------
# Files, plots, Markdown, HTML
# --------------------------------------------------------------------------------------------


def test_every_plot_is_a_non_blank_png(report):
    run, paths = report
    for name in ALL_PLOTS:
        assert paths[name] == run / "report" / f"{name}.png"
        rgb = _rgb(paths[name])
        assert rgb.shape[0] > 200 and rgb.shape[1] > 300
        assert rgb.var() > 0
        assert (rgb < 0.9).any(axis=-1).mean() > 0.01  # not all white
        saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
        assert (saturation > 0.3).sum() > 100, f"{name}: no coloured plot lines"


def test_markdown_references_plots_and_escapes(report):
    run, paths = report
    md = paths["markdown"].read_text(encoding="utf-8")
    for name in ALL_PLOTS:
        assert f"]({name}.png)" in md
        assert (run / "report" / f"{name}.png").is_file()
    for heading in ("## Verdict", "## Configuration", "## Training", "## Toxicity", "## Summary quality", "## Examples"):
        assert heading in md
    assert "<script>" not in md and "&lt;script>" in md  # no tag can open; the rest reads as written ("->" stays "->")
    assert "ROUGE-L" in md and "google/flan-t5-base" in md


def test_html_is_self_contained_and_escaped(report):
    _, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script" not in page.lower()
    assert page.count('src="data:image/png;base64,') == len(ALL_PLOTS)
    for sid in ("verdict", "config", "training", "toxicity", "quality", "examples"):
        assert f'id="{sid}"' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;i&gt;&amp;&lt;/i&gt;" in page  # dialogue text in the query column
    assert "<summary>#Person1#: Hi, is table" in page  # previews drop the prompt template
    assert "(judge agrees) &amp; ROUGE-L" in page
    assert '<section id="verdict" class="good">' in page  # the CI of the reduction excludes 0
    # Numbers a reviewer needs: the CI of the reduction, the judge column, the skipped minibatch.
    assert "bootstrap 95% CI" in page and "judge (packaged:profanity-check)" in page
    assert "1 minibatch(es) were skipped" in page
    assert page.count('<tr class="example">') == 10


def test_examples_are_most_improved_and_worsened():
    rows = [{"reward_diff": d} for d in (5, 4, 3, 2, 1, -1, -2, -3, -4, -5, -6, 0.5)] + [{"reward_diff": None}]
    top, worst = select_examples(rows, 5)
    assert [r["reward_diff"] for r in top] == [5, 4, 3, 2, 1]
    assert [r["reward_diff"] for r in worst] == [-6, -5, -4, -3, -2]
    top, worst = select_examples([{"reward_diff": d} for d in (3, 1, -2)], 5)
    assert [r["reward_diff"] for r in top] == [3, 1] and [r["reward_diff"] for r in worst] == [-2]


def test_without_compare_json_reports_plain_means(tmp_path):
    run = make_run(tmp_path, compare=False)
    paths = write_report(run)
    page = paths["html"].read_text(encoding="utf-8")
    assert "comparison was not run" in page
    assert page.count('<tr class="example">') == 10  # paired from before/after by id
    assert "ROUGE-L" in page and "fraction ≥ 0.5" in page
    assert "toxicity_distribution" in paths


def test_renders_what_detoxrl_compare_writes(tmp_path):
    """Integration: the headline of detoxrl.compare (nested diffs, ROUGE in points, percentage
    improvement, k samples per prompt) renders with its intervals."""
    compare = pytest.importorskip("detoxrl.compare")
    run = make_run(tmp_path, compare=False)
    ev = run / "eval"
    for name in ("before", "after"):  # two samples per prompt: expected max / P(any toxic) appear
        recs = [json.loads(line) for line in (ev / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        recs += [{**r, "sample": 1, "toxicity": min(1.0, r["toxicity"] * 1.5)} for r in recs]
        (ev / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    head = compare.compare_files(ev / "before.jsonl", ev / "after.jsonl", ev, n_boot=200)
    paths = write_report(run)
    page = paths["html"].read_text(encoding="utf-8")
    verdict = re.search(r'<section id="verdict".*?</section>', page, re.S).group(0)
    assert html.escape(head["verdict"], quote=True) in verdict
    quality = re.search(r'<section id="quality".*?</section>', page, re.S).group(0)
    for label in ("ROUGE-L (points, F×100)", "faithfulness", "length (tokens)"):
        row = re.search(re.escape(label) + r".*?</tr>", quality, re.S)
        assert row, label
        assert row.group(0).count("[") == 1, f"{label}: no interval"  # the CI cell
    tox = re.search(r'<section id="toxicity".*?</section>', page, re.S).group(0)
    assert "expected max over 2 samples" in tox and "P(any of 2 samples" in tox
    assert "percentage improvement" in tox and "reward-model score" in tox
    pct = head["toxicity"]["percentage_improvement"]["mean"]
    assert f"{pct:.2f}%" in tox
    assert page.count('<tr class="example">') == 10


def test_missing_metric_keys_plot_what_exists(tmp_path):
    metrics = [{"step": s, "env/reward_mean": 0.1 * s, "time/step_s": 5.0} for s in range(1, 6)]
    metrics.append({"step": 6})  # a step that logged nothing plottable
    run = make_run(tmp_path, metrics=metrics)
    (run / "metrics.jsonl").open("a").write('{"step": 7, "env/rew')  # killed mid-write
    paths = write_report(run)
    assert {"training_reward", "training_time", "toxicity_distribution"} <= set(paths)
    assert not ({"training_kl", "training_losses", "training_returns_advantages"} & set(paths))
    page = paths["html"].read_text(encoding="utf-8")
    assert "Not logged, so not plotted" in page
    assert "only 6 of 12 planned steps" in page
    assert "1 unreadable line(s) skipped" in page


def test_not_a_run_folder(tmp_path):
    with pytest.raises(DetoxError) as err:
        write_report(tmp_path)
    msg = str(err.value)
    assert msg == f"'{tmp_path}' is not a detoxrl run folder (no metrics.jsonl); pass the --output-dir of a train run"
    assert "\n" not in msg
    (tmp_path / "final").mkdir(parents=True)  # a run that lost its log still gets a report
    paths = write_report(tmp_path)
    assert "No verdict" in paths["html"].read_text(encoding="utf-8")
    assert not (set(TRAINING_PLOTS) & set(paths))


def test_run_without_metrics_found_by_the_final_adapter_checkpoint_writes(tmp_path):
    """report looked for checkpoints/final, while checkpoint.save_final writes RUN/final/."""
    import torch

    from detoxrl.checkpoint import save_final

    class _Policy:
        value_head = torch.nn.Linear(2, 1)

        def save_adapter(self, folder):
            (Path(folder) / "adapter_config.json").write_text("{}")

    final = save_final(tmp_path, _Policy())
    assert final == tmp_path / "final" and not (tmp_path / "checkpoints" / "final").exists()
    paths = write_report(tmp_path)  # no metrics.jsonl: the final adapter alone marks a run folder
    assert "No verdict" in paths["html"].read_text(encoding="utf-8")
    with pytest.raises(DetoxError, match="not a detoxrl run folder"):
        shutil.rmtree(final)
        (tmp_path / "checkpoints" / "final").mkdir(parents=True)  # not where detoxrl writes it
        write_report(tmp_path)


# --------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("chromium is not installed (make browser installs it)")


def _chrome(args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.title = 'IMGS:' + imgs.map(function (i) {
    return (i.src.indexOf('data:image/png;base64,') === 0 ? 'D' : 'X') + i.naturalWidth;
  }).join(',');
});
</script>"""


@pytest.mark.browser
def test_rendered_in_chromium(report, tmp_path):
    exe = _chromium()  # skips before any work when absent
    assert exe
    run, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    verdict_html = verdict_of(run).replace("&", "&amp;")

    # 1. The page as written: verdict, examples, no script element anywhere (escaping held).
    dom = _chrome(["--dump-dom", paths["html"].as_uri()])
    verdict = re.search(r'<section id="verdict".*?</section>', dom, re.S)
    assert verdict and f'<p class="verdict-line">{verdict_html}</p>' in verdict.group(0)
    examples = re.search(r'<section id="examples".*?</section>', dom, re.S)
    assert examples and examples.group(0).count('<tr class="example">') == 10
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert" in examples.group(0)

    # 2. A copy with a probe (the report's CSP forbids scripts, so the copy drops it): every image
    #    is a data: URI that decoded to a real width.
    probe = tmp_path / "probe.html"
    copy = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe.write_text(copy.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chrome(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()])
    title = re.search(r"<title>IMGS:([^<]*)</title>", dom)
    assert title, "probe did not run"
    widths = title.group(1).split(",")
    assert len(widths) == 6
    assert all(w.startswith("D") and int(w[1:]) > 0 for w in widths), widths

    # 3. Pixels: the upper part (verdict, config, training plots) has content and coloured lines.
    shot = tmp_path / "shot.png"
    _chrome([f"--screenshot={shot}", "--window-size=1280,2400", paths["html"].as_uri()])
    rgb = _rgb(shot)
    assert rgb.shape[:2] == (2400, 1280)
    upper = rgb[:1600]
    assert (upper < 0.85).any(axis=-1).mean() > 0.05
    saturation = upper.max(axis=-1) - upper.min(axis=-1)
    assert (saturation > 0.35).sum() > 2000


# --------------------------------------------------------------------------------------------
# Typed settings, and what compare decides when compare.json is missing
# --------------------------------------------------------------------------------------------


def test_an_older_config_shows_with_defaults_and_names_what_it_left_out(tmp_path):
    """config.yaml is read as a DetoxConfig: settings an older run did not record show their defaults,
    and a setting this detoxrl does not know is named on the page instead of silently missing."""
    run = make_run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["ppo"]["clip_ratio_old_name"] = 0.3
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    md = write_report(run)["markdown"].read_text(encoding="utf-8")
    assert "| clip ratio / value clip | 0.2 / 0.2 |" in md  # not in the file: the default
    assert "| steps | 12 |" in md and "| seed | 0 |" in md  # from the file
    assert "config.yaml: unknown config key 'ppo.clip_ratio_old_name'" in md


def test_evaluations_that_do_not_pair_show_no_examples_and_say_why(tmp_path):
    run = make_run(tmp_path, compare=False)
    after = run / "eval" / "after.jsonl"
    recs = [json.loads(line) for line in after.read_text(encoding="utf-8").splitlines()]
    after.write_text("".join(json.dumps(r) + "\n" for r in recs[:-1]), encoding="utf-8")  # one prompt short
    page = write_report(run)["html"].read_text(encoding="utf-8")
    assert "eval/before.jsonl and eval/after.jsonl do not pair, so no examples are shown" in page
    assert "evaluated on different prompts" in page
    assert '<tr class="example">' not in page
    assert "fraction ≥ 0.5" in page  # each side is still summarised


def golden_run_with_checkpoint_evaluation(tmp_path: Path) -> tuple[Path, dict]:
    """The golden run (8 steps) with its final comparison also written as step 4's checkpoint evaluation."""
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "report_golden" / "run", run)
    final = json.loads((run / "eval" / "compare.json").read_text())
    (run / "eval-checkpoints" / "step-000004").mkdir(parents=True)
    (run / "eval-checkpoints" / "step-000004" / "compare.json").write_text(json.dumps(final))
    return run, final


def test_evaluated_checkpoints_draw_the_toxicity_frontier(tmp_path):
    """eval-checkpoints/step-N/compare.json (evaluate --checkpoint) and eval/compare.json (the final adapter,
    at the last logged step) are the points of the frontier plot, in step order; the page shows it."""
    from detoxrl.report import frontier_points, load_run
    from detoxrl.report_plots import FRONTIER_PLOT

    run, final = golden_run_with_checkpoint_evaluation(tmp_path)
    points = frontier_points(load_run(run))
    assert [p["step"] for p in points] == [4, 8]  # 8: the golden run's last logged step
    measures = {m["judge"]: m for m in final["detoxification"]["primary"]["measures"]}
    svm = points[1]["primary"]["packaged:profanity-check"]
    assert svm["change_pct"] == pytest.approx(-100 * measures["packaged:profanity-check"]["reduction"])
    assert points[1]["kl_sampled_nats"] == final["detoxification"]["kl_to_reference"]["mean"]
    paths = write_report(run)
    assert paths[FRONTIER_PLOT].is_file() and mpimg.imread(paths[FRONTIER_PLOT]).shape[1] > 1000
    assert "Toxicity against KL and quality over training" in paths["html"].read_text(encoding="utf-8")
    assert f"]({FRONTIER_PLOT}.png)" in paths["markdown"].read_text(encoding="utf-8")
    # without checkpoint evaluations there is one point: no frontier plot (and a stale one goes)
    shutil.rmtree(run / "eval-checkpoints")
    assert FRONTIER_PLOT not in write_report(run) and not (run / "report" / f"{FRONTIER_PLOT}.png").exists()


def test_several_runs_share_one_frontier_plot_a_row_per_primary_judge(tmp_path, monkeypatch):
    """plot_algorithm_frontier (benchmarks/algo_frontier.py): one line per run through its points in step
    order, on a row per primary judge, quality change left and KL right; a point without a KL is left out
    of the KL panel only."""
    from matplotlib.figure import Figure

    from detoxrl.report import frontier_points, load_run
    from detoxrl.report_plots import plot_algorithm_frontier

    run, _ = golden_run_with_checkpoint_evaluation(tmp_path)
    points = frontier_points(load_run(run))
    other = [dict(p, step=2 * p["step"], kl_sampled_nats=None if p["step"] == 4 else 0.5) for p in points]
    drawn = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), savefig(fig, *a, **k))[1])
    path = tmp_path / "frontier.png"
    plot_algorithm_frontier({"ppo": points, "rloo": other}, path)
    judges = list(points[0]["primary"])
    axes = drawn[0].axes
    assert len(axes) == 2 * len(judges) and mpimg.imread(path).shape[1] == 1100
    quality, kl = axes[0], axes[1]
    assert [t.get_text() for t in quality.get_legend().get_texts()] == ["ppo", "rloo"]  # no gate given: no gate line
    assert [t.get_text() for t in quality.texts] == ["4", "8", "8", "16"]  # each run's steps, in order
    assert [t.get_text() for t in kl.texts] == ["4", "8", "16"]  # rloo's step 8 has no KL
    quality_key = "rouge_l_diff_points" if points[0]["rouge_l_diff_points"] is not None else "faithfulness_diff"
    ppo_line = quality.containers[0].lines[0]  # the first errorbar drawn: ppo's data line
    assert list(ppo_line.get_xdata()) == [p[quality_key] for p in points]
    assert list(ppo_line.get_ydata()) == [p["primary"][judges[0]]["change_pct"] for p in points]
    plot_algorithm_frontier({"ppo": points}, path, quality_gate=-1.0)  # the gate: a dashed line at -1
    gate = [ln for ln in drawn[1].axes[0].lines if ln.get_label() == "quality gate"]
    assert len(gate) == 1 and list(gate[0].get_xdata()) == [-1.0, -1.0]


def test_a_two_step_run_has_whole_step_ticks_and_a_flat_kl_coefficient_reads_plainly(tmp_path, monkeypatch):
    """A short run's step axis reads 1, 2 (not 1.0, 1.2, ...), and a KL coefficient that moved by 1e-5 is
    drawn on an axis from 0, without matplotlib's "1e-5 + 1.9999e-1" offset."""
    from matplotlib.figure import Figure

    from detoxrl.report_plots import _plot_kl
    from detoxrl.runfiles import MetricsLog

    drawn = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **kw: (drawn.append(self), savefig(self, *a, **kw))[1])
    rows = [{"step": 1, "objective/kl": 0.1, "objective/kl_coef": 0.2}, {"step": 2, "objective/kl": 0.3, "objective/kl_coef": 0.19999}]
    assert _plot_kl(MetricsLog(rows), tmp_path / "kl.png", None)
    ax, coefficient_axis = drawn[0].axes
    drawn[0].canvas.draw()
    steps = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert steps and all(re.fullmatch(r"[0-9]+", s.replace("−", "-")) for s in steps), steps
    assert coefficient_axis.get_ylim()[0] == 0.0
    assert coefficient_axis.yaxis.get_offset_text().get_text() == ""


def test_an_empty_summary_shows_as_such_not_as_a_blank_cell(tmp_path):
    run = make_run(tmp_path)
    table_file = run / "eval" / "comparison.json"  # the before/after table the report's examples come from
    table = json.loads(table_file.read_text())
    rows = table["rows"] if isinstance(table, dict) else table
    for row in rows:
        row["response_after"] = ""
    table_file.write_text(json.dumps(table))
    paths = write_report(run)
    assert "(empty summary)" in paths["html"].read_text(encoding="utf-8")
    assert "(empty summary)" in paths["markdown"].read_text(encoding="utf-8")


def test_the_frontier_quality_axis_is_rouge_l_where_any_point_has_it_else_faithfulness():
    from detoxrl.report_plots import frontier_quality_axis

    chitchat = [{"rouge_l_diff_points": None, "faithfulness_diff": 0.03}]
    dialogsum = chitchat + [{"rouge_l_diff_points": -0.2, "faithfulness_diff": -0.001}]
    assert frontier_quality_axis(chitchat) == ("faithfulness_diff", "faithfulness change (greedy)")
    assert frontier_quality_axis(dialogsum) == ("rouge_l_diff_points", "ROUGE-L change (points, greedy)")
