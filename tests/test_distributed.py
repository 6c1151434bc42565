"""Data-parallel PPO (issue 10): rollout shards, several processes, global statistics, one writer.

The fast tests check the pieces by hand: whitening with the moments of several shards, the update's
mean over shards, the seeds, the checks of a launch. The slow ones start real processes with torchrun
(gloo on CPU, tiny models) and compare them with one process that runs the same rollout shards one
after another.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import detoxrl
from detoxrl.advantages import masked_moments, masked_whiten, whiten_with_moments
from detoxrl.config import PPOConfig, load_config, resolve_rollout_shards
from detoxrl.errors import ConfigError
from detoxrl.losses import policy_loss, value_loss
from detoxrl.rollout import Rollout
from detoxrl.preflight import check_launch
from detoxrl.schedule import rollout_seed, step_seed
from detoxrl.trainer import Trainer
from detoxrl.update import UpdateBatch, UpdateHooks, ppo_update

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(detoxrl.__file__).resolve().parents[1]  # the detoxrl under test (a worktree's src/ or site-packages)
ROOT = Path(__file__).resolve().parents[1]  # the repository (examples/)


# --------------------------------------------------------------------------------------------
# Global whitening, by hand


def test_global_whitening_of_two_shards_by_hand():
    """Two shards of different widths hold the real values 1, 2, 3 and 4, 5: mean 3, unbiased variance
    ((-2)^2 + (-1)^2 + 0 + 1 + 2^2) / (5 - 1) = 2.5. Each shard whitened with the summed moments gets
    (x - 3) / sqrt(2.5), as the concatenated batch does; padding stays 0 whatever it held."""
    a, mask_a = torch.tensor([[1.0, 2.0, 99.0], [3.0, -7.0, 50.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    b, mask_b = torch.tensor([[4.0, 5.0]]), torch.tensor([[1, 1]])
    assert masked_moments(a, mask_a).tolist() == [3.0, 6.0, 14.0]  # count, 1 + 2 + 3, 1 + 4 + 9
    assert masked_moments(b, mask_b).tolist() == [2.0, 9.0, 41.0]
    moments = masked_moments(a, mask_a) + masked_moments(b, mask_b)  # what an all-reduce sum gives
    sd = 2.5 ** 0.5
    torch.testing.assert_close(whiten_with_moments(a, mask_a, moments), torch.tensor([[-2 / sd, -1 / sd, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(whiten_with_moments(b, mask_b, moments), torch.tensor([[1 / sd, 2 / sd]]))
    # The same as whitening the concatenated batch (padded to one width), shard by shard.
    cat = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 5.0, 0.0]])
    cat_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0]])
    whole = masked_whiten(cat, cat_mask)
    torch.testing.assert_close(whiten_with_moments(a, mask_a, moments), torch.cat([whole[:2], torch.zeros(0, 3)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten_with_moments(b, mask_b, moments), whole[2:, :2], atol=1e-6, rtol=0)


def test_global_whitening_equals_whitening_the_concatenation():
    """Random shards (widths 7 and 4, ragged masks, a mean far from 0): float64 moments reproduce the
    two-pass float32 whitening of the whole batch to float32 rounding."""
    g = torch.Generator().manual_seed(0)
    shards = []
    for rows, width in ((5, 7), (3, 4)):
        x = 40.0 + 3.0 * torch.randn(rows, width, generator=g)
        lengths = torch.randint(1, width + 1, (rows,), generator=g)
        shards.append((x, (torch.arange(width)[None, :] < lengths[:, None]).long()))
    moments = sum(masked_moments(x, m) for x, m in shards)
    whole_x = torch.cat([torch.nn.functional.pad(x, (0, 7 - x.shape[1])) for x, _ in shards])
    whole_m = torch.cat([torch.nn.functional.pad(m, (0, 7 - m.shape[1])) for _, m in shards])
    whole = masked_whiten(whole_x, whole_m)
    got = torch.cat([torch.nn.functional.pad(whiten_with_moments(x, m, moments), (0, 7 - x.shape[1])) for x, m in shards])
    torch.testing.assert_close(got, whole, atol=2e-5, rtol=0)  # float32's two-pass whitening of values near 40


def test_global_whitening_needs_two_real_tokens():
    with pytest.raises(ValueError, match="at least 2"):
        whiten_with_moments(torch.ones(1, 2), torch.tensor([[1, 0]]), masked_moments(torch.ones(1, 2), torch.tensor([[1, 0]])))


# --------------------------------------------------------------------------------------------
# The update: a gradient step averages the shards' losses


def _toy_shard(seed: int, rows: int = 3, width: int = 4) -> UpdateBatch:
    g = torch.Generator().manual_seed(seed)
    response_ids = torch.randint(2, 9, (rows, width), generator=g)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    response_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    rollout = Rollout(
        query_ids=torch.ones(rows, 2, dtype=torch.long), query_mask=torch.ones(rows, 2, dtype=torch.long),
        response_ids=response_ids, response_mask=response_mask, ended=torch.ones(rows, dtype=torch.bool),
        queries=[""] * rows, responses=[""] * rows,
    )
    rand = lambda: torch.randn(rows, width, generator=g)  # noqa: E731
    return UpdateBatch(rollout, old_logprobs=-1.0 + 0.1 * rand(), old_values=rand(), advantages=rand(), returns=rand())


def _toy_forward(theta):
    """Log-probs and values that depend on a parameter [2] and on each row's tokens."""
    def forward(sub: Rollout) -> dict:
        ids = sub.response_ids.float()
        return {"logprobs": -torch.nn.functional.softplus(theta[0] * ids / 8.0), "values": theta[1] * ids / 8.0}
    return forward


def _shard_loss(theta, batch: UpdateBatch) -> torch.Tensor:
    out = _toy_forward(theta)(batch.rollout)
    mask = batch.rollout.response_mask.float()
    pg, _ = policy_loss(out["logprobs"], batch.old_logprobs, batch.advantages, mask, 0.2)
    vf, _ = value_loss(out["values"], batch.old_values, batch.returns, mask, 0.2)
    return pg + 0.1 * vf


def _toy_two_shard_step(micro_batch_size: int | None):
    """One gradient step of plain SGD (lr 0.5) over two toy shards of 3 rows: (theta after it, theta after
    the step on the mean of the two shards' losses computed by hand, the update's stats, the order of
    ``no_sync`` entries and backwards)."""
    shards = [_toy_shard(1), _toy_shard(2, rows=3, width=6)]
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.5]))
    expected = theta.detach() - 0.5 * torch.autograd.grad((_shard_loss(theta, shards[0]) + _shard_loss(theta, shards[1])) / 2, theta)[0]
    events = []

    class NoSync:
        def __enter__(self):
            events.append("no_sync")

        def __exit__(self, *exc):
            return False

    def backward(loss):
        events.append("backward")
        loss.backward()

    policy = SimpleNamespace(is_seq2seq=True, trainable_parameters=lambda: [theta])
    stats = ppo_update(
        policy,
        torch.optim.SGD([theta], lr=0.5),
        shards,
        PPOConfig(ppo_epochs=1, mini_batch_size=3, micro_batch_size=micro_batch_size, clip_ratio=0.2, clip_value=0.2,
                  vf_coef=0.1, max_grad_norm=None, ratio_threshold=10.0, group_by_length=False),
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        hooks=UpdateHooks(forward=_toy_forward(theta), no_sync=NoSync, backward=backward),
    )
    return theta.detach(), expected, stats, events


def test_update_of_two_shards_steps_on_the_mean_of_their_losses():
    """What one process computes for two shards is what DDP computes for two processes: the gradient
    of (loss of shard 0 + loss of shard 1) / 2, each a masked mean over its own tokens. The passes of
    every shard but the last run inside ``no_sync`` (DDP averages once per step)."""
    theta, expected, stats, events = _toy_two_shard_step(None)
    assert stats["ppo/applied_minibatches"] == 1 and events == ["no_sync", "backward"]  # shard 0's pass only
    torch.testing.assert_close(theta, expected, atol=1e-6, rtol=0)  # row order: float32 rounding


def test_micro_batches_of_two_shards_step_on_the_mean_of_their_losses():
    """With ppo.micro_batch_size=1 each row is its own pass, its loss weighted by its share of its shard's
    tokens: the step is the same as above, and every pass but the step's last runs inside ``no_sync``
    (forward and backward), so that DDP averages the accumulated gradients once."""
    theta, expected, stats, events = _toy_two_shard_step(1)
    assert stats["ppo/applied_minibatches"] == 1
    assert events == ["no_sync", "backward"] * 5 + ["backward"]  # 6 passes of one row: a backward each, the last synchronised
    torch.testing.assert_close(theta, expected, atol=1e-6, rtol=0)


def test_update_step_is_skipped_when_any_process_says_so():
    """A step that the guard stops on one process is skipped by every process (``all_agree``): none
    applies it, none waits in a backward for the others."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.5]))
    policy = SimpleNamespace(is_seq2seq=True, trainable_parameters=lambda: [theta])
    votes = []
    stats = ppo_update(
        policy,
        torch.optim.SGD([theta], lr=0.5),
        [_toy_shard(1), _toy_shard(2)],
        PPOConfig(ppo_epochs=1, mini_batch_size=3, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1,
                  max_grad_norm=1.0, ratio_threshold=10.0, group_by_length=False),
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        hooks=UpdateHooks(forward=_toy_forward(theta), all_agree=lambda ok: votes.append(ok) or False),
    )
    assert votes == [True] and stats["ppo/applied_minibatches"] == 0 and stats["ppo/skipped_minibatches"] == 1
    assert torch.equal(theta.detach(), torch.tensor([0.3, -0.5])) and theta.grad is None


def test_grad_norm_of_none_is_not_checked():
    """DeepSpeed's engine clips and steps inside its backward, and accelerate's clip_grad_norm_ may then
    return None (FSDP too in some setups): the update logs NaN instead of calling torch.isfinite(None)."""
    theta = torch.nn.Parameter(torch.tensor([0.3, -0.5]))
    policy = SimpleNamespace(is_seq2seq=True, trainable_parameters=lambda: [theta])
    stats = ppo_update(
        policy,
        torch.optim.SGD([theta], lr=0.5),
        _toy_shard(1),
        PPOConfig(ppo_epochs=1, mini_batch_size=3, clip_ratio=0.2, clip_value=0.2, vf_coef=0.1,
                  max_grad_norm=1.0, ratio_threshold=10.0, group_by_length=False),
        generator=torch.Generator().manual_seed(0),
        hooks=UpdateHooks(clip_grad_norm=lambda params, norm: None, forward=_toy_forward(theta)),
    )
    assert stats["ppo/applied_minibatches"] == 1 and stats["ppo/grad_norm"] != stats["ppo/grad_norm"]  # NaN


# --------------------------------------------------------------------------------------------
# Seeds and the checks of a launch


def test_rollout_seed_of_shard_zero_is_the_step_seed():
    """A one-shard run samples as runs did before there were shards; other shards get other seeds."""
    assert rollout_seed(7, 3, 0) == step_seed(7, 3)
    assert len({rollout_seed(7, 3, s) for s in range(4)} | {rollout_seed(7, 4, 0)}) == 5


def _cfg(*overrides):
    return load_config("seed", overrides=["data.source=unused", *overrides])


def test_rollout_shards_must_split_the_batch_and_the_minibatch():
    with pytest.raises(ConfigError, match=r"ppo.batch_size 6 is 6 prompts .* do not split into 4 rollout shards .* --batch-size 8$"):
        _cfg("ppo.batch_size=6", "ppo.mini_batch_size=2", "ppo.rollout_shards=4")
    # k = 4 samples per prompt: 2 prompts, and a prompt's group never spans two shards.
    with pytest.raises(ConfigError, match=r"is 2 prompts of 4 sample\(s\) .* 4 rollout shards .* --batch-size 16$"):
        _cfg("ppo.batch_size=8", "ppo.samples_per_prompt=4", "ppo.rollout_shards=4")
    with pytest.raises(ConfigError, match=r"ppo.mini_batch_size \(3\) must split into 2 rollout shards .* --mini-batch-size 2$"):
        _cfg("ppo.batch_size=12", "ppo.mini_batch_size=3", "ppo.rollout_shards=2")
    with pytest.raises(ConfigError, match="ppo.rollout_shards must be >= 1"):
        _cfg("ppo.rollout_shards=0")
    assert _cfg("ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.rollout_shards=4").ppo.rollout_shards == 4


def test_rollout_shards_must_spread_evenly_over_the_processes():
    cfg = _cfg("ppo.batch_size=8", "ppo.mini_batch_size=4")
    assert cfg.ppo.rollout_shards is None and resolve_rollout_shards(cfg, 2) == 2
    assert cfg.ppo.rollout_shards is None  # the config is frozen: the trainer runs with a copy that holds the number
    with pytest.raises(ConfigError, match=r"8 prompts .* do not split into 3 rollout shards \(one per process: 3 processes\)"):
        resolve_rollout_shards(_cfg("ppo.batch_size=8", "ppo.mini_batch_size=4"), 3)
    with pytest.raises(ConfigError, match=r"ppo.rollout_shards \(2\) must be a multiple of the number of processes \(4\)"):
        resolve_rollout_shards(_cfg("ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.rollout_shards=2"), 4)
    # A run recorded with 4 shards (its config.yaml) runs on 1, 2 or 4 processes, the same steps each time.
    for processes in (1, 2, 4):
        assert resolve_rollout_shards(_cfg("ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.rollout_shards=4"), processes) == 4


def test_resume_under_deepspeed_is_refused():
    with pytest.raises(ConfigError, match="--resume is not supported under DeepSpeed"):
        check_launch(_cfg(), 2, deepspeed=True, resume=True)
    check_launch(_cfg(), 2, deepspeed=True, resume=False)


def test_cli_refuses_a_batch_that_does_not_split_into_shards(tiny_config, tmp_path, no_weights_loaded, capsys):
    from detoxrl.cli import main

    tiny_config().save_yaml(tmp_path / "cfg.yaml")
    rc = main(["train", "--config", str(tmp_path / "cfg.yaml"), "--batch-size", "3", "--mini-batch-size", "1",
               "--set", "ppo.rollout_shards=2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ppo.batch_size 3 is 3 prompts"), err
    assert not (tmp_path / "run").exists()


def test_evaluate_and_demo_refuse_several_processes(monkeypatch, capsys):
    """Only train is data-parallel: every process of an evaluate would write the same files."""
    from detoxrl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("evaluate", "demo"):
        assert main([command]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: detoxrl {command} runs in one process; start it without torchrun") and err.count("\n") == 1


@pytest.mark.slow  # a real accelerate launch (about 10 s: accelerate and torch import twice)
def test_accelerate_launch_asked_for_two_cpu_processes_that_started_one_is_refused(tmp_path):
    """accelerate launch --cpu --num_processes 2 starts one process: train says so and does nothing."""
    accelerate = Path(sys.executable).with_name("accelerate")
    out = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "-m", "detoxrl", "train",
                          "--output-dir", str(tmp_path / "run"), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"})
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("error: accelerate launch was asked for several processes but started one") and "torchrun --nproc_per_node N" in errors[0]
    assert not (tmp_path / "run").exists()


def test_python_dash_m_detoxrl():
    out = subprocess.run([sys.executable, "-m", "detoxrl", "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0 and "train" in out.stdout and "make-tiny" in out.stdout, out.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo) against one process running the same two shards

# Weights of a 2-process run and of 1 process running its 2 shards: the same operations on the same
# shapes (a shard's pass does not depend on which process runs it), and DDP's average of two
# gradients, (g0 + g1) / 2, is the mean of two losses' gradients in any order (two-term float sums
# commute, halving is exact). Measured here: equal to the bit for this T5 (max difference 0.0); a tiny
# Llama differed by 8.9e-8 (MKL's products round differently with the memory layout of their inputs;
# bitwise with MKL_CBWR=COMPATIBLE), and 4 shards on 2 processes by 4.3e-7 (four gradients summed in
# another order). The tolerance leaves room for such rounding and stays two orders below one Adam step
# at the test's learning rate (1e-3), so a different update fails it.
WEIGHT_TOLERANCE = dict(atol=1e-5, rtol=1e-5)

HANG_HOOK = '''import os, pathlib, sys, time
import detoxrl.trainer

_real, _calls = detoxrl.trainer.logprobs_and_values, [0]


def _logprobs_and_values(*args, **kwargs):  # the N-th call of this process: after sampling and scoring, before the update
    _calls[0] += 1
    if _calls[0] == int(os.environ["DETOXRL_TEST_HANG_AT"]):
        pathlib.Path(os.environ["DETOXRL_TEST_HANG_MARKER"] + "." + os.environ["RANK"]).write_text(str(os.getpid()))
        time.sleep(600)
    return _real(*args, **kwargs)


detoxrl.trainer.logprobs_and_values = _logprobs_and_values
from detoxrl.cli import main

sys.exit(main(sys.argv[1:]))
'''


def _torchrun(tmp_path: Path, target: list[str], argv: list, log_name: str, env: dict | None = None) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node 2 TARGET train ARGV`` (each process on one thread)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    log = open(tmp_path / log_name, "w")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, "train", *map(str, argv)]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _tiny_args(config_factory, folder: Path, out: Path) -> list:
    """The issue's command: the tiny models, --steps 3 --batch-size 4 --mini-batch-size 2 --max-new-tokens 8."""
    config_factory("ppo.learning_rate=1e-3", "run.save_every=2", "run.keep_checkpoints=5", output_dir=out).save_yaml(folder / "base.yaml")
    return ["--config", folder / "base.yaml", "--steps", 3, "--batch-size", 4, "--mini-batch-size", 2, "--max-new-tokens", 8,
            "--output-dir", out, "--no-progress"]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, config_factory):
    """``torchrun --nproc_per_node 2 -m detoxrl train ...`` for 3 steps: (run folder, its log, its arguments)."""
    folder = tmp_path_factory.mktemp("two_processes")
    argv = _tiny_args(config_factory, folder, folder / "run")
    proc = _torchrun(folder, ["-m", "detoxrl"], argv, "torchrun.log")
    rc = proc.wait(timeout=600)
    log = (folder / "torchrun.log").read_text()
    assert rc == 0, log[-4000:]
    return folder / "run", log, argv


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, config_factory):
    """The same run in this process, its batch taken as the 2 rollout shards of the 2-process run."""
    folder = tmp_path_factory.mktemp("one_process")
    cfg = config_factory("ppo.learning_rate=1e-3", "run.save_every=2", "run.keep_checkpoints=5", "ppo.rollout_shards=2",
                         output_dir=folder / "run", steps=3, batch_size=4, mini_batch_size=2, max_new_tokens=8)
    before = torch.get_num_threads()
    trainer = Trainer(cfg)
    trainer.train()
    torch.set_num_threads(before)
    return folder / "run", trainer


@pytest.mark.slow  # three torchrun launches in this module, each two processes importing torch (about 20 s each)
def test_two_processes_train_what_one_process_trains_with_their_two_shards(two_processes, one_process):
    run, log, _ = two_processes
    single, trainer = one_process
    # One writer: one metrics line per step, one final/, one "trained" line, checkpoints as configured.
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # The reference adapter, switched on the plain model beside the DDP wrapper: KL 0 at step 1, then not.
    assert rows[0]["objective/kl"] == 0.0 and rows[1]["objective/kl"] != 0.0 and rows[2]["objective/kl"] != 0.0
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("final")) == ["final"]
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert log.count("trained 3 steps") == 1, log[-3000:]
    assert "on one process, --set ppo.rollout_shards=2 reproduces it" in log  # the end-of-run line says how
    assert "rollout_shards: 2" in (run / "config.yaml").read_text()
    # Disjoint prompt shards: process r sampled shard r, the two halves of the step's prompts.
    for record in (json.loads(line) for line in (run / "shards.jsonl").read_text().splitlines()):
        step = record["step"] - 1
        assert [(s["shard"], s["process"]) for s in record["shards"]] == [(0, 0), (1, 1)]
        first, second = (s["prompts"] for s in record["shards"])
        assert len(first) == len(second) == 2 and not set(first) & set(second)
        assert first + second == [e.id for e in trainer.batch_examples(step)]
        assert [first, second] == [[e.id for e in trainer.shard_examples(step, s)] for s in (0, 1)]
    assert (single / "shards.jsonl").read_text() == (run / "shards.jsonl").read_text().replace('"process": 1', '"process": 0')
    # The same model, within the tolerance (equal to the bit on the machines measured so far).
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        two, one = load_file(str(run / "final" / name)), load_file(str(single / "final" / name))
        assert two.keys() == one.keys() and two
        for key in two:
            torch.testing.assert_close(two[key], one[key], **WEIGHT_TOLERANCE)
    # Every logged metric is of the whole batch: the same numbers as the one process logged.
    for a, b in zip(without_time(rows), without_time(read_metrics(single))):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_result(two_processes, tmp_path):
    """Both processes killed (SIGKILL) during step 3, after the checkpoint of step 2; ``--resume`` with
    two processes (both load that checkpoint) ends with the metrics and weights of the run that never stopped."""
    run, _, argv = two_processes
    out = tmp_path / "run"
    argv = [out if a == run else a for a in argv]
    (tmp_path / "hang.py").write_text(HANG_HOOK)
    marker = tmp_path / "hanging"
    proc = _torchrun(tmp_path, [tmp_path / "hang.py"], argv, "killed.log",
                     env={"DETOXRL_TEST_HANG_AT": "3", "DETOXRL_TEST_HANG_MARKER": str(marker)})
    deadline = time.time() + 300
    markers = [Path(f"{marker}.{rank}") for rank in (0, 1)]
    while not all(m.exists() for m in markers):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "the run never reached step 3"
        time.sleep(0.1)
    time.sleep(0.2)  # the pid is written
    for m in markers:
        os.kill(int(m.read_text()), signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"] and not (out / "final").exists()

    proc = _torchrun(tmp_path, ["-m", "detoxrl"], ["--output-dir", out, "--resume", "--no-progress"], "resumed.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert without_time(read_metrics(out)) == without_time(read_metrics(run))
    assert (out / "shards.jsonl").read_text() == (run / "shards.jsonl").read_text()
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        resumed, uninterrupted = load_file(str(out / "final" / name)), load_file(str(run / "final" / name))
        assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted), name


@pytest.mark.slow
def test_two_process_run_resumes_on_one_process(two_processes, tmp_path):
    """The run's config.yaml records 2 rollout shards, so one process resuming it from the checkpoint of
    step 2 runs step 3 as the two processes did: the same metrics and weights."""
    import shutil

    from detoxrl.config import load_config

    run, _, _ = two_processes
    out = tmp_path / "run"
    shutil.copytree(run, out)
    cfg = load_config(path=out / "config.yaml", overrides=[f"run.output_dir={out}"])
    assert cfg.ppo.rollout_shards == 2
    trainer = Trainer(cfg, resume=True, resume_from="step-000002")
    assert trainer.step_idx == 2 and trainer.local_shards == [0, 1]
    final = trainer.train()
    assert without_time(read_metrics(out)) == without_time(read_metrics(run))
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        one, two = load_file(str(final / name)), load_file(str(run / "final" / name))
        for key in two:
            torch.testing.assert_close(one[key], two[key], **WEIGHT_TOLERANCE)


# --------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes, against DDP on the same shards

# The shipped examples/accelerate files with mixed_precision off (a CPU has no bf16 engine to compare
# with DDP's float32) and one process per CPU core.
def _deepspeed_file(folder: Path, stage: int) -> Path:
    text = (ROOT / "examples" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text()
    text = text.replace("mixed_precision: bf16", "mixed_precision: 'no'")
    assert "mixed_precision: 'no'" in text and "num_processes: 2" in text
    path = folder / f"accelerate-zero{stage}.yaml"
    path.write_text(text)
    return path


# DeepSpeed's engine (its ZeRO optimizer wrapping the same Adam, its own all-reduce and gradient
# clipping) and DDP do the same arithmetic in another order. Measured (2026-12-07, tiny models, 3 steps
# of lr 1e-3): metrics equal within 2.3e-6, weights within 6.4e-4 (T5) and 2.6e-6 (Llama) of DDP's. Adam
# divides each gradient by its own running magnitude, so where a gradient is near zero a rounding
# difference moves that weight by up to one step (lr); an update that went wrong (a missed step, other
# data, an unreduced gradient) moves the metrics and the weights far beyond these.
DEEPSPEED_WEIGHT_ATOL = 2e-3  # two Adam steps of lr 1e-3
DEEPSPEED_METRIC_ATOL = 1e-4


def _launch(folder: Path, launcher: list[str], argv: list, log_name: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*launcher, "-m", "detoxrl", "train", *map(str, argv)], env=env, capture_output=True, text=True,
                         timeout=900, cwd=folder)
    (folder / log_name).write_text(out.stdout + out.stderr)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


def _final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted((run / "final").glob("*.safetensors")):
        weights.update({f"{f.name}:{k}": v.float() for k, v in load_file(f).items()})
    return weights


@pytest.mark.slow  # six launches of two processes (about 3 minutes in all)
@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_deepspeed_zero2_and_zero3_train_as_ddp_does(arch, tmp_path, config_factory, tiny_llama):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make test installs it: DS_BUILD_OPS=0 pip install '.[deepspeed]')")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    policy = tiny_llama if arch == "llama" else None
    runs = {}
    for name in ("ddp", "zero2", "zero3"):
        config_factory("ppo.learning_rate=1e-3", "policy.dtype=float32", output_dir=tmp_path / name,
                       policy=policy).save_yaml(tmp_path / f"{name}.yaml")
        argv = ["--config", tmp_path / f"{name}.yaml", "--steps", 3, "--batch-size", 4, "--mini-batch-size", 2,
                "--max-new-tokens", 8, "--output-dir", tmp_path / name, "--no-progress"]
        if name == "ddp":
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        else:
            launcher = [accelerate, "launch", "--config_file", str(_deepspeed_file(tmp_path, int(name[-1])))]
        last = _launch(tmp_path, launcher, argv, f"{name}.log").strip().splitlines()[-1]
        # The run says what started: DeepSpeed, not a quiet fallback to DDP (accelerate's cpu=True would do that).
        expected = "2 processes (DDP on CPU)" if name == "ddp" else f"2 processes (DeepSpeed ZeRO-{name[-1]})"
        assert f"on {expected};" in last, last
        runs[name] = (read_metrics(tmp_path / name), _final_weights(tmp_path / name))
    ddp_metrics, ddp_weights = runs["ddp"]
    for name in ("zero2", "zero3"):
        metrics, weights = runs[name]
        assert weights.keys() == ddp_weights.keys()  # the same adapter (and value head) is saved, whole
        assert len(metrics) == len(ddp_metrics) == 3
        for ours, theirs in zip(metrics, ddp_metrics):
            for key in ("env/reward_mean", "objective/kl", "ppo/loss/policy", "ppo/loss/value"):
                assert ours[key] == pytest.approx(theirs[key], abs=DEEPSPEED_METRIC_ATOL), (name, key)
        worst = max((weights[k] - ddp_weights[k]).abs().max().item() for k in ddp_weights)
        assert worst <= DEEPSPEED_WEIGHT_ATOL, (name, worst)


def test_micro_batches_under_deepspeed_are_refused():
    """accelerate's backward under DeepSpeed also steps the optimizer: a minibatch cannot take several."""
    with pytest.raises(ConfigError, match=r"ppo.micro_batch_size=1 is not supported under DeepSpeed.*train without DeepSpeed"):
        check_launch(_cfg("ppo.micro_batch_size=1"), 2, deepspeed=True)
    # a micro-batch as large as a shard's minibatch (4 / 2 processes) is one pass: nothing to refuse
    check_launch(_cfg("ppo.micro_batch_size=2"), 2, deepspeed=True)
    check_launch(_cfg("ppo.micro_batch_size=1"), 2, deepspeed=False)
