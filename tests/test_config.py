"""detoxrl.config: presets, YAML file + --set overrides, and one-line errors for every mistake."""

import dataclasses

import pytest
import yaml

from detoxrl.config import (
    NOTEBOOK_TEMPLATE,
    PACKAGED_BILSTM,
    PACKAGED_CHITCHAT,
    PACKAGED_SMOLLM2,
    PACKAGED_SVM,
    PRESETS,
    DetoxConfig,
    load_config,
    parse_override,
    validate,
    with_settings,
)
from detoxrl.errors import ConfigError, DetoxError


def write_yaml(tmp_path, mapping, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


def config_error(**kwargs) -> str:
    """The message of the ConfigError that load_config(**kwargs) raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, DetoxError)
    return message


# --------------------------------------------------------------------------------------------
# presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, DetoxConfig)
    assert cfg.preset == name
    validate(cfg)  # idempotent
    # every key of the preset landed in the config
    for section, values in PRESETS[name].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"


def test_default_preset_is_offline():
    cfg = load_config()
    assert cfg.preset == "offline"
    assert cfg.policy.model == PACKAGED_SMOLLM2
    assert (cfg.reward.model, cfg.reward.label, cfg.reward.toxic_label) == (PACKAGED_BILSTM, "non-toxic", "toxic")
    # independent judges, none of them the reward model: the profanity SVM and HateSonar (two views)
    assert cfg.evaluation.judge_model == [PACKAGED_SVM, "packaged:hatesonar", "packaged:hatesonar#hate_speech"]
    assert cfg.evaluation.samples_per_prompt == 8 and cfg.reward.transform == "clipped_logit"  # the ablation's winner
    assert cfg.data.source == PACKAGED_CHITCHAT


def test_seed_preset_is_the_notebook():
    cfg = load_config("seed")
    assert cfg.policy.model == "google/flan-t5-base"
    assert (cfg.policy.lora_r, cfg.policy.lora_alpha, cfg.policy.lora_dropout) == (32, 32, 0.05)
    assert cfg.reward.model == "facebook/roberta-hate-speech-dynabench-r4-target"
    assert (cfg.reward.label, cfg.reward.toxic_label) == ("nothate", "hate")
    assert (cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.ppo_epochs) == (16, 4, 1)
    assert cfg.ppo.learning_rate == pytest.approx(1.41e-5)
    assert (cfg.generation.top_k, cfg.generation.top_p, cfg.generation.do_sample) == (0, 1.0, True)
    assert (cfg.data.min_chars, cfg.data.max_chars, cfg.data.test_fraction) == (200, 1000, 0.2)
    assert cfg.data.template == NOTEBOOK_TEMPLATE and "{dialogue}" in cfg.data.template
    assert cfg.data.source == "knkarthick/dialogsum"


def test_unknown_preset():
    msg = config_error(preset="sead")
    assert "unknown preset 'sead'" in msg and "offline" in msg and "seed" in msg


def test_unknown_preset_in_file(tmp_path):
    msg = config_error(path=write_yaml(tmp_path, {"preset": "fast"}))
    assert "unknown preset 'fast'" in msg


# --------------------------------------------------------------------------------------------
# precedence: preset < file < overrides


def test_file_then_overrides_precedence(tmp_path):
    path = write_yaml(tmp_path, {"preset": "seed", "ppo": {"learning_rate": 1e-4, "batch_size": 8, "mini_batch_size": 2}})
    cfg = load_config(path=path)
    assert cfg.preset == "seed"  # the file's preset
    assert cfg.ppo.learning_rate == pytest.approx(1e-4)  # file beats preset
    assert cfg.ppo.batch_size == 8
    assert cfg.policy.model == "google/flan-t5-base"  # untouched preset value

    cfg = load_config(path=path, overrides=["ppo.learning_rate=2e-5", "generation.max_new_tokens=12"])
    assert cfg.ppo.learning_rate == pytest.approx(2e-5)  # override beats file
    assert cfg.ppo.batch_size == 8  # file value kept
    assert cfg.generation.max_new_tokens == 12

    cfg = load_config(path=path, overrides={"ppo": {"batch_size": 4}})  # nested-dict overrides too
    assert (cfg.ppo.batch_size, cfg.ppo.mini_batch_size) == (4, 2)


def test_explicit_preset_beats_the_files_preset(tmp_path):
    path = write_yaml(tmp_path, {"preset": "seed", "run": {"seed": 7}})
    cfg = load_config(preset="offline", path=path)
    assert cfg.preset == "offline" and cfg.policy.model == PACKAGED_SMOLLM2 and cfg.run.seed == 7


def test_later_override_of_the_same_key_wins():
    cfg = load_config(overrides=["run.seed=1", "run.seed=2"])
    assert cfg.run.seed == 2


def test_override_value_may_contain_equals_and_dots():
    cfg = load_config(overrides=["run.output_dir=runs/a=b.c"])
    assert cfg.run.output_dir == "runs/a=b.c"


def test_saved_yaml_round_trips(tmp_path):
    cfg = load_config("seed", overrides=["ppo.steps=3", "policy.lora_target_modules=q,v", "data.max_rows=40"])
    cfg.save_yaml(tmp_path / "config.yaml")
    again = load_config(path=tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_empty_section_in_file_is_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\nrun:\n  seed: 3\n")
    assert load_config(path=path).run.seed == 3


# --------------------------------------------------------------------------------------------
# parsing of --set values


@pytest.mark.parametrize(
    "text,expected",
    [("true", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
     ("false", False), ("no", False), ("off", False), ("0", False), ("False", False)],
)
def test_bool_parsing(text, expected):
    assert load_config(overrides=[f"run.progress={text}"]).run.progress is expected


def test_yaml_booleans(tmp_path):
    cfg = load_config(path=write_yaml(tmp_path, {"run": {"progress": False}, "data": {"use_chat_template": True}}))
    assert cfg.run.progress is False and cfg.data.use_chat_template is True


def test_bad_bool():
    msg = config_error(overrides=["run.progress=maybe"])
    assert "run.progress must be true or false" in msg and "maybe" in msg


def test_list_parsing(tmp_path):
    assert load_config(overrides=["policy.lora_target_modules=q,v"]).policy.lora_target_modules == ["q", "v"]
    assert load_config(overrides=["policy.lora_target_modules= q , v ,"]).policy.lora_target_modules == ["q", "v"]
    assert load_config(overrides=["policy.lora_target_modules=q_proj"]).policy.lora_target_modules == ["q_proj"]
    assert load_config(overrides=["policy.lora_target_modules=none"]).policy.lora_target_modules is None
    assert load_config(overrides=["run.log_with=tensorboard"]).run.log_with == ["tensorboard"]
    assert load_config(overrides=["run.log_with="]).run.log_with == []
    path = write_yaml(tmp_path, {"policy": {"lora_target_modules": ["q_proj", "v_proj"]}})
    assert load_config(path=path).policy.lora_target_modules == ["q_proj", "v_proj"]


def test_bad_list():
    msg = config_error(overrides={"policy": {"lora_target_modules": {"q": 1}}})
    assert "policy.lora_target_modules must be a list" in msg


def test_numbers_and_optionals():
    cfg = load_config(overrides=["ppo.learning_rate=1e-5", "ppo.max_grad_norm=none", "data.max_rows=40", "evaluation.judge_model=null"])
    assert cfg.ppo.learning_rate == pytest.approx(1e-5) and isinstance(cfg.ppo.learning_rate, float)
    assert cfg.ppo.max_grad_norm is None
    assert cfg.data.max_rows == 40 and isinstance(cfg.data.max_rows, int)
    assert cfg.evaluation.judge_model is None
    assert load_config(overrides=["ppo.init_kl_coef=1"]).ppo.init_kl_coef == 1.0  # an int is a valid float


def test_yaml_scientific_notation_without_dot(tmp_path):
    # PyYAML reads 1e-5 (no dot) as a string; it is still a number here.
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  learning_rate: 1e-5\n")
    assert load_config(path=path).ppo.learning_rate == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("ppo.batch_size=abc", "ppo.batch_size must be an integer, got 'abc'"),
        ("ppo.batch_size=16.5", "ppo.batch_size must be an integer"),
        ("ppo.batch_size=true", "ppo.batch_size must be an integer"),
        ("ppo.learning_rate=fast", "ppo.learning_rate must be a number, got 'fast'"),
        ("ppo.learning_rate=nan", "ppo.learning_rate must be a number"),
        ("data.max_rows=many", "data.max_rows must be an integer"),
    ],
)
def test_wrong_type(override, fragment):
    assert fragment in config_error(overrides=[override])


def test_wrong_type_in_file(tmp_path):
    msg = config_error(path=write_yaml(tmp_path, {"ppo": {"batch_size": "sixteen"}}))
    assert "ppo.batch_size must be an integer" in msg
    msg = config_error(path=write_yaml(tmp_path, {"data": {"template": ["not", "a", "string"]}}))
    assert "data.template must be a string" in msg


# --------------------------------------------------------------------------------------------
# unknown keys and sections


def test_unknown_key_did_you_mean():
    msg = config_error(overrides=["ppo.batch_sise=4"])
    assert "unknown config key 'ppo.batch_sise'" in msg and "did you mean 'batch_size'" in msg


def test_unknown_key_without_close_match_lists_the_keys():
    msg = config_error(overrides=["ppo.zzz=1"])
    assert "unknown config key 'ppo.zzz'" in msg and "batch_size" in msg and "learning_rate" in msg


def test_key_in_the_wrong_section_names_the_right_one():
    msg = config_error(overrides=["ppo.max_new_tokens=16"])
    assert "generation.max_new_tokens" in msg


def test_unknown_key_in_file(tmp_path):
    msg = config_error(path=write_yaml(tmp_path, {"reward": {"lable": "nothate"}}))
    assert "unknown config key 'reward.lable'" in msg and "did you mean 'label'" in msg


def test_unknown_section():
    msg = config_error(overrides=["ppx.steps=1"])
    assert "unknown config section 'ppx'" in msg and "did you mean 'ppo'" in msg


def test_unknown_section_in_file(tmp_path):
    msg = config_error(path=write_yaml(tmp_path, {"trainer": {"steps": 1}}))
    assert "unknown config section 'trainer'" in msg


def test_section_that_is_not_a_mapping(tmp_path):
    msg = config_error(path=write_yaml(tmp_path, {"ppo": 5}))
    assert "section 'ppo' must be a mapping" in msg


@pytest.mark.parametrize("text,fragment", [("ppo.steps", "section.key=value"), ("steps=3", "must name a section")])
def test_malformed_override(text, fragment):
    assert fragment in config_error(overrides=[text])


def test_parse_override():
    assert parse_override("ppo.learning_rate=1e-5") == ("ppo", "learning_rate", "1e-5")
    assert parse_override("data.template=a=b") == ("data", "template", "a=b")


# --------------------------------------------------------------------------------------------
# cross-field checks


@pytest.mark.parametrize("batch,mini,suggested", [(6, 4, 3), (16, 5, 4), (10, 4, 2), (7, 2, 1)])
def test_mini_batch_must_divide_batch(batch, mini, suggested):
    msg = config_error(overrides=[f"ppo.batch_size={batch}", f"ppo.mini_batch_size={mini}"])
    assert f"ppo.mini_batch_size ({mini}) must divide ppo.batch_size ({batch})" in msg
    assert f"--mini-batch-size {suggested}" in msg
    assert batch % suggested == 0


def test_micro_batch_must_be_positive():
    msg = config_error(overrides=["ppo.micro_batch_size=0"])
    assert "ppo.micro_batch_size must be positive (rows per forward/backward pass), got 0" in msg
    assert load_config(overrides=["ppo.micro_batch_size=1"]).ppo.micro_batch_size == 1


def test_template_without_dialogue():
    msg = config_error(overrides=["data.template=Summarize: {text}"])
    assert "data.template must contain '{dialogue}'" in msg


def test_template_with_other_placeholders_fails_before_any_model():
    msg = config_error(overrides={"data": {"template": "Summarize for {reader}: {dialogue}"}})
    assert "data.template cannot be filled" in msg and "{{" in msg
    # literal braces, written doubled, are fine
    cfg = load_config(overrides={"data": {"template": "{{json}} {dialogue}"}})
    assert cfg.data.template.format(dialogue="x") == "{json} x"


def test_bad_tracker():
    msg = config_error(overrides=["run.log_with=tensorboard,mlflow"])
    assert "run.log_with" in msg and "mlflow" in msg and "tensorboard" in msg and "wandb" in msg


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["data.min_chars=500", "data.max_chars=400"], "data.min_chars (500) must be >= 0 and below data.max_chars (400)"),
        (["data.test_fraction=1.5"], "data.test_fraction"),
        (["policy.architecture=rnn"], "policy.architecture must be auto, seq2seq or causal"),
        (["policy.dtype=float16"], "policy.dtype must be auto, float32 or bfloat16"),
        (["policy.lora_r=0"], "policy.lora_r"),
        (["policy.lora_dropout=1.0"], "policy.lora_dropout"),
        (["reward.input=dialogue"], "reward.input must be 'response' or 'query+response'"),
        (["reward.batch_size=0"], "reward.batch_size"),
        (["generation.max_new_tokens=0"], "max_new_tokens"),
        (["generation.min_new_tokens=80", "generation.max_new_tokens=64"], "min_new_tokens <= max_new_tokens"),
        (["generation.temperature=0"], "generation.temperature must be positive"),
        (["generation.top_p=0"], "top_p"),
        (["generation.top_k=-1"], "top_k"),
        (["ppo.steps=0"], "ppo.steps must be positive"),
        (["ppo.learning_rate=-1e-5"], "ppo.learning_rate must be a positive number"),
        (["ppo.learning_rate=inf"], "ppo.learning_rate must be a positive number"),
        (["ppo.lam=1.5"], "ppo.gamma and ppo.lam"),
        (["ppo.ratio_threshold=1"], "ppo.ratio_threshold must be > 1"),
        (["ppo.kl_horizon=0"], "ppo.kl_horizon must be positive"),
        (["ppo.clip_ratio=0"], "ppo.clip_ratio must be positive"),
        (["ppo.max_grad_norm=0"], "ppo.max_grad_norm must be positive or none"),
        (["ppo.score_clip=-1"], "ppo.score_clip must be positive or none"),
        (["run.save_every=0"], "run.save_every must be a positive"),
        (["run.num_threads=0"], "run.num_threads"),
        (["evaluation.num_samples=0"], "evaluation.num_samples"),
        (["evaluation.split=validation"], "evaluation.split must be 'test'"),
        (["evaluation.samples_per_prompt=-1"], "evaluation.samples_per_prompt must be >= 1"),
        (["reward.transform=softplus"], "unknown reward.transform 'softplus'"),
        (["reward.faithfulness_weight=-1"], "reward.faithfulness_weight"),
        (["reward.faithfulness_weight=inf"], "reward.faithfulness_weight"),
        (["data.min_dialogue_toxicity=2"], "data.min_dialogue_toxicity is a probability threshold in [0, 1]"),
        (["data.selection_scorer= "], "data.selection_scorer is empty"),
        (["evaluation.judge_model=packaged:hatesonar#"], "evaluation.judge_model has an empty entry"),
        (["ppo.batch_size=8", "ppo.samples_per_prompt=3"], "ppo.samples_per_prompt (3) must be >= 1 and divide ppo.batch_size (8)"),
        (["ppo.samples_per_prompt=0"], "ppo.samples_per_prompt (0) must be >= 1"),
        (["ppo.samples_per_prompt=4", "generation.do_sample=false"], "needs generation.do_sample=true"),
        (["ppo.reward_baseline=mean"], "ppo.reward_baseline must be 'none' or 'group'"),
        (["ppo.reward_baseline=group"], "needs ppo.samples_per_prompt >= 2"),
        (["evaluation.primary=max_toxicity"], "evaluation.primary must be one of expected_max, sampled_mean, greedy_mean"),
        (["evaluation.primary_judges=packaged:detoxify"], "evaluation.primary_judges names packaged:detoxify, which is not among"),
        (["evaluation.primary_judges="], "evaluation.primary_judges is empty"),
        (["evaluation.samples_per_prompt=1"], "evaluation.primary=expected_max needs evaluation.samples_per_prompt >= 2"),
        (["evaluation.max_faithfulness_drop=-0.01"], "evaluation.max_faithfulness_drop is how much quality may fall"),
    ],
)
def test_bad_values_are_one_line_config_errors(overrides, fragment):
    assert fragment in config_error(overrides=overrides)


def _float_settings() -> list[str]:
    """Every ``section.key`` whose type is a float (or an optional float)."""
    import typing

    from detoxrl.config import _SECTION_CLASSES

    out = []
    for section, cls in _SECTION_CLASSES.items():
        for key, tp in typing.get_type_hints(cls).items():
            if tp is float or float in typing.get_args(tp):
                out.append(f"{section}.{key}")
    return out


@pytest.mark.parametrize("key", _float_settings())
@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_every_float_setting_must_be_finite(key, value):
    """inf passes checks such as '> 0' and then, e.g. as ppo.vf_coef, skips every minibatch silently."""
    section, name = key.split(".")
    assert name in config_error(overrides=[f"{key}={value}"])  # its range check, or the catch-all for finiteness
    cfg = load_config()
    edited = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: float(value)})})
    with pytest.raises(ConfigError, match=name):  # a config built around load_config, validated again
        validate(edited)


def test_vf_coef_clip_ratio_and_temperature_of_inf_are_refused():
    """The cases of the issue: each exited 0 after skipping every minibatch, with lora_B still zero."""
    assert "ppo.vf_coef must be a finite number, got inf" in config_error(overrides=["ppo.vf_coef=inf"])
    assert "ppo.clip_ratio must lie in (0, 1)" in config_error(overrides=["ppo.clip_ratio=inf"])
    assert "generation.temperature must be a finite number, got inf" in config_error(overrides=["generation.temperature=inf"])


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("ppo.clip_ratio=1", "ppo.clip_ratio must lie in (0, 1)"),
        ("reward.weight=-1", "reward.weight must be >= 0"),
        ("reward.missing_eos_penalty=-2", "reward.missing_eos_penalty must be >= 0 or none"),
    ],
    ids=["clip ratio of 1", "negative reward weight", "negative missing-EOS penalty"],
)
def test_absurd_hyperparameters_are_refused(override, fragment):
    assert fragment in config_error(overrides=[override])


@pytest.mark.parametrize("key", ["run.seed", "evaluation.seed"])
@pytest.mark.parametrize("value", [10**23, 2**63, -1])
def test_seed_out_of_range(key, value):
    """torch.manual_seed overflows (a traceback) beyond 64 bits: one line naming the range instead."""
    msg = config_error(overrides=[f"{key}={value}"])
    assert f"{key} must be an integer in [0, 2**63), got {value}" in msg
    assert load_config(overrides=[f"{key}={2**63 - 1}"])  # the largest one is fine


def test_unknown_data_encoding():
    msg = config_error(overrides=["data.encoding=klingon"])
    assert "unknown data.encoding 'klingon'" in msg and "latin-1" in msg
    assert load_config(overrides=["data.encoding=cp1252"]).data.encoding == "cp1252"


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, "ppo:\n  steps: 3  # caf\u00e9\n".encode("latin-1")],
                         ids=["binary", "latin-1"])
def test_binary_or_non_utf8_yaml(tmp_path, content):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    msg = config_error(path=path)
    assert f"config file '{path}' is not UTF-8 text (byte 0x" in msg and "--config" in msg


def test_missing_config_file(tmp_path):
    msg = config_error(path=tmp_path / "nope.yaml")
    assert "does not exist" in msg and "--config" in msg


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo: [1, 2\n  steps: 3\n")
    assert "is not valid YAML" in config_error(path=path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "must be a YAML mapping" in config_error(path=path)


def test_validate_catches_direct_edits():
    cfg = load_config()
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, batch_size=8, mini_batch_size=3))  # no load_config
    with pytest.raises(ConfigError, match="must divide"):
        validate(cfg)


def test_a_loaded_config_is_frozen():
    """One validated config: nothing changes it after load_config (derived values go into a new one)."""
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.batch_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.reward = cfg.reward
    for section in ("data", "policy", "reward", "generation", "ppo", "run", "evaluation", "sft"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(cfg, section), dataclasses.fields(getattr(cfg, section))[0].name, None)


def test_with_settings_returns_a_new_validated_config():
    cfg = load_config()
    before = cfg.to_dict()
    new = with_settings(cfg, {"reward": {"toxic_label": "toxic"}, "ppo": {"rollout_shards": "1"}})
    assert new.reward.toxic_label == "toxic" and new.ppo.rollout_shards == 1  # coerced as a file's values are
    assert cfg.to_dict() == before
    with pytest.raises(ConfigError, match="must divide"):
        with_settings(cfg, {"ppo": {"batch_size": 8, "mini_batch_size": 3}})


def test_config_is_plain_data():
    cfg = load_config("seed")
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(DetoxConfig)}
    assert yaml.safe_load(yaml.safe_dump(d)) == d


# --------------------------------------------------------------------------------------------
# Remote code: per model, and only when the caller (the command line) allows it


@pytest.mark.parametrize("setting", ["policy.trust_remote_code", "reward.trust_remote_code", "evaluation.judge_trust_remote_code"])
def test_trust_remote_code_from_a_file_alone_is_refused(setting, tmp_path):
    section, key = setting.split(".")
    path = tmp_path / "config.yaml"
    path.write_text(f"{section}:\n  {key}: true\n")
    who = {"policy": "policy", "reward": "reward", "evaluation": "judge"}[section]
    for kwargs in ({"path": path}, {"overrides": [f"{setting}=true"]}):
        with pytest.raises(ConfigError) as e:
            load_config("seed", **kwargs)
        msg = str(e.value)
        assert msg.startswith(f"{setting} is true in the configuration") and "\n" not in msg
        assert f"--trust-remote-code {who}" in msg and f"{setting}=false" in msg
    cfg = load_config("seed", path=path, trust_remote_code=[who])  # allowed for this model: honoured
    assert getattr(getattr(cfg, section), key) is True


def test_trust_remote_code_is_allowed_per_model():
    cfg = load_config("seed", trust_remote_code=["judge"])
    assert cfg.evaluation.judge_trust_remote_code is True
    assert cfg.policy.trust_remote_code is False and cfg.reward.trust_remote_code is False
    assert load_config("seed", trust_remote_code=["policy", "reward"]).reward.trust_remote_code is True
    with pytest.raises(ConfigError, match="--trust-remote-code takes policy, reward, judge .*got 'everything'"):
        load_config("seed", trust_remote_code=["everything"])


def test_changed_settings_leave_out_those_that_do_not_affect_the_result():
    """What train --resume compares: a changed hyper-parameter or seed counts, progress bars, logging,
    checkpoint spacing, step count and evaluation settings do not (RESUME_FREE_SETTINGS)."""
    from detoxrl.config import RESUME_FREE_SETTINGS, changed_settings

    old = load_config("seed").to_dict()
    same_result = load_config("seed", overrides=[
        "run.progress=false", "run.log_with=tensorboard", "run.save_every=1", "run.keep_checkpoints=9", "ppo.steps=99",
        "run.num_threads=1", "run.output_dir=elsewhere", "evaluation.num_samples=3", "run.release_memory=false",
    ]).to_dict()
    assert changed_settings(old, same_result) == {}
    other = load_config("seed", overrides=["ppo.learning_rate=1e-3", "run.seed=4", "ppo.target_kl=3", "policy.lora_target_modules=q,k",
                                           "evaluation.judge_model=x"]).to_dict()
    assert changed_settings(old, other) == {
        "evaluation.judge_model": (["facebook/roberta-hate-speech-dynabench-r4-target"], ["x"]),  # can select training prompts
        "policy.lora_target_modules": (None, ["q", "k"]),
        "ppo.learning_rate": (1.41e-5, 1e-3),
        "ppo.target_kl": (6.0, 3.0),
        "run.seed": (0, 4),
    }
    # Every free setting exists (a renamed key would silently become free otherwise).
    keys = {f"{section}.{key}" for section, values in old.items() if isinstance(values, dict) for key in values} | {"preset"}
    assert RESUME_FREE_SETTINGS <= keys


@pytest.mark.parametrize("text, twice, lines", [
    ("ppo:\n  learning_rate: 0.1\ndata:\n  max_rows: 10\nppo:\n  steps: 3\n", "ppo", "1 and 5"),  # a section twice
    ("ppo:\n  learning_rate: 0.1\n  steps: 3\n  learning_rate: 0.2\n", "learning_rate", "2 and 4"),  # a key twice
])
def test_yaml_with_a_key_twice_is_refused_not_half_dropped(tmp_path, text, twice, lines):
    """Plain YAML keeps the last of two equal keys and drops the first without a word: a whole ppo:
    section, or a learning rate of 0.1 that became the default. Here that is one line naming both."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    msg = config_error(path=path)
    assert f"gives '{twice}' twice (lines {lines})" in msg and "keep one of them" in msg


def test_an_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match="run.output_dir is empty; name the run folder"):
        load_config(overrides=["run.output_dir="])


def test_evaluation_num_samples_none_means_every_held_out_prompt():
    assert load_config(overrides=["evaluation.num_samples=none"]).evaluation.num_samples is None
    with pytest.raises(ConfigError, match="evaluation.num_samples"):
        load_config(overrides=["evaluation.num_samples=0"])
