"""Tests of detoxrl.prompts: sources, the notebook's filter and split, templates, tokenization, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from detoxrl import prompts
from detoxrl.config import NOTEBOOK_TEMPLATE, PACKAGED_CHITCHAT, DataConfig
from detoxrl.errors import ConfigError, DataError
from detoxrl.prompts import (
    build_prompts,
    check_data_source,
    filter_rows,
    load_dialogue_rows,
    render_prompt,
    split_rows,
)

DIALOGSUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum"
needs_dialogsum = pytest.mark.skipif(not (DIALOGSUM / "train.csv").is_file(), reason="no local DialogSum copy")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _dialogue(n_chars: int, seed: int = 0) -> str:
    """A DialogSum-like dialogue of exactly ``n_chars`` characters."""
    words = ["hello", "movie", "doctor", "meeting", "tomorrow", "coffee", "thanks", "great", "sure", "why"]
    lines, i = [], seed
    text = ""
    while len(text) < n_chars:
        person = 1 + len(lines) % 2
        line = f"#Person{person}#: " + " ".join(words[(i + k) % len(words)] for k in range(6)) + "."
        lines.append(line)
        i += 3
        text = "\n".join(lines)
    return text[:n_chars]


def _rows(n: int = 10) -> list[dict]:
    return [
        {"id": f"train_{i}", "dialogue": _dialogue(250 + 37 * i, seed=i), "summary": f"Person1 and Person2 talk ({i})."}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tok():
    from detoxrl.tiny import train_tokenizer

    corpus = [r["dialogue"] for r in _rows(40)] + [NOTEBOOK_TEMPLATE, "Summarize the following conversation. Summary:"]
    return train_tokenizer(corpus, kind="llama")


@pytest.fixture(scope="module")
def t5_tok():
    from detoxrl.tiny import train_tokenizer

    return train_tokenizer([r["dialogue"] for r in _rows(20)] + [NOTEBOOK_TEMPLATE], kind="t5")


@pytest.fixture(scope="module")
def chat_tok():
    from detoxrl.tiny import train_tokenizer

    t = train_tokenizer([r["dialogue"] for r in _rows(40)] + [NOTEBOOK_TEMPLATE], kind="llama")
    t.chat_template = CHAT_TEMPLATE
    return t


def _write(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    df = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    return path


def _cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# --------------------------------------------------------------------------------------------
# The notebook's data: DialogSum train, 200 < len <= 1000, unshuffled 80/20


@needs_dialogsum
def test_dialogsum_notebook_split(tok):
    # a folder: reads train.csv. The tiny tokenizer's vocabulary is small (a 1000-char dialogue is
    # ~700 of its tokens, ~250 of FLAN-T5's), hence the raised token limit.
    cfg = _cfg(DIALOGSUM, max_prompt_tokens=4096)
    rows = load_dialogue_rows(cfg)
    assert len(rows) == 12460
    assert set(rows[0]) == {"id", "dialogue", "summary"} and rows[0]["id"] == "train_0"
    kept = filter_rows(rows, 200, 1000)
    assert len(kept) == 10022
    train, test = split_rows(kept, 0.2)
    assert (len(train), len(test)) == (8017, 2005)
    assert test[0] is kept[8017] and train[-1] is kept[8016]  # unshuffled: test[0] is the 8018th kept row

    splits = build_prompts(cfg, tok)
    assert (len(splits.train), len(splits.test)) == (8017, 2005)
    assert (splits.n_rows, splits.n_filtered) == (12460, 10022)
    assert [e.id for e in splits.test[:3]] == [r["id"] for r in kept[8017:8020]]
    first = splits.train[0]
    assert first.prompt == NOTEBOOK_TEMPLATE.format(dialogue=kept[0]["dialogue"])
    assert first.reference == kept[0]["summary"] and first.dialogue == kept[0]["dialogue"]
    s = splits.stats()
    assert (s["train"], s["test"], s["rows"], s["kept"]) == (8017, 2005, 12460, 10022)
    assert 200 < s["dialogue_chars"]["min"] <= s["dialogue_chars"]["p50"] <= s["dialogue_chars"]["max"] <= 1000
    assert s["prompt_tokens"]["min"] <= s["prompt_tokens"]["mean"] <= s["prompt_tokens"]["max"] <= cfg.max_prompt_tokens


@needs_dialogsum
def test_dialogsum_file_equals_folder_and_max_rows():
    folder_rows = load_dialogue_rows(_cfg(DIALOGSUM, split="validation"))
    file_rows = load_dialogue_rows(_cfg(DIALOGSUM / "validation.csv"))
    assert folder_rows == file_rows and len(file_rows) == 500


@needs_dialogsum
def test_dialogsum_max_rows_before_split(tok):
    splits = build_prompts(_cfg(DIALOGSUM, max_rows=50, max_prompt_tokens=4096), tok)
    kept = filter_rows(load_dialogue_rows(_cfg(DIALOGSUM)), 200, 1000)
    assert (len(splits.train), len(splits.test), splits.n_filtered) == (40, 10, 10022)
    assert [e.id for e in splits.train + splits.test] == [r["id"] for r in kept[:50]]


# --------------------------------------------------------------------------------------------
# Filter and split


def test_filter_edges():
    rows = [{"id": str(n), "dialogue": "x" * n, "summary": None} for n in (0, 200, 201, 500, 1000, 1001)]
    rows.append({"id": "blank", "dialogue": " " * 300, "summary": None})
    kept = filter_rows(rows, 200, 1000)
    assert [r["id"] for r in kept] == ["201", "500", "1000"]
    assert [r["id"] for r in filter_rows(rows, 0, 5000)] == ["200", "201", "500", "1000", "1001"]  # "" never kept


@pytest.mark.parametrize(
    "n, fraction, expected",
    [(10022, 0.2, (8017, 2005)), (10, 0.2, (8, 2)), (11, 0.2, (8, 3)), (15, 0.2, (12, 3)), (1, 0.2, (0, 1)), (0, 0.2, (0, 0))],
)
def test_split_counts(n, fraction, expected):
    train, test = split_rows(list(range(n)), fraction)
    assert (len(train), len(test)) == expected
    assert train + test == list(range(n))


def test_split_matches_datasets_train_test_split():
    import datasets

    for n in (7, 10, 23, 101):
        ds = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.2, shuffle=False)
        train, test = split_rows(list(range(n)), 0.2)
        assert (train, test) == (ds["train"]["i"], ds["test"]["i"])


# --------------------------------------------------------------------------------------------
# Templates


def test_default_template_is_the_notebooks():
    assert DataConfig().template == "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
    d = "#Person1#: Hi.\n#Person2#: Hello."
    assert render_prompt(d, DataConfig()) == f"\nSummarize the following conversation.\n\n{d}\n\nSummary:\n"


def test_custom_template_and_braces_in_dialogue(tok):
    cfg = DataConfig(template="Dialogue: {dialogue}\nTL;DR:")
    assert render_prompt("#Person1#: {x} and {}", cfg) == "Dialogue: #Person1#: {x} and {}\nTL;DR:"
    cfg = DataConfig(template="{{json}} {dialogue}")
    assert render_prompt("d", cfg) == "{json} d"
    with pytest.raises(ConfigError) as e:
        render_prompt("d", DataConfig(template="{dialogue} {other}"))
    assert "data.template" in _one_line_error(e)


def test_chat_template_render_and_single_bos(chat_tok, tok):
    d = _dialogue(300)
    cfg = DataConfig(use_chat_template=True)
    text = NOTEBOOK_TEMPLATE.format(dialogue=d)
    prompt = render_prompt(d, cfg, chat_tok)
    assert prompt == f"<s><|user|>\n{text}</s>\n<|assistant|>\n"
    # Without a chat template on the tokenizer (or with the flag off) the plain template is used.
    assert render_prompt(d, cfg, tok) == text
    assert render_prompt(d, DataConfig(use_chat_template=False), chat_tok) == text
    assert render_prompt(d, cfg, None) == text

    rows = _rows(10)
    ids = prompts._tokenize([render_prompt(r["dialogue"], cfg, chat_tok) for r in rows], chat_tok, chat=True)
    bos = chat_tok.bos_token_id
    for x in ids:
        assert x[0] == bos and x[1] != bos  # the chat template's BOS, not a second one


def test_system_prompt_is_a_system_turn_before_the_user_turn(tmp_path, chat_tok):
    d = _dialogue(300)
    cfg = DataConfig(use_chat_template=True, system_prompt="You summarize conversations.")
    text = NOTEBOOK_TEMPLATE.format(dialogue=d)
    assert render_prompt(d, cfg, chat_tok) == f"<s><|system|>\nYou summarize conversations.</s>\n<|user|>\n{text}</s>\n<|assistant|>\n"
    # build_prompts renders the same way as render_prompt (one template for training and evaluation)
    src = _write(_rows(10), tmp_path / "d.jsonl")
    data_cfg = _cfg(src, use_chat_template=True, system_prompt="You summarize conversations.")
    ex = build_prompts(data_cfg, chat_tok).train[0]
    assert ex.prompt == render_prompt(ex.dialogue, data_cfg, chat_tok)
    assert ex.input_ids == chat_tok(ex.prompt, add_special_tokens=False).input_ids


def test_system_prompt_without_the_chat_template_is_refused():
    from detoxrl.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(overrides=["data.system_prompt=You summarize.", "data.use_chat_template=false"])
    assert "data.use_chat_template" in _one_line_error(e)


def test_build_prompts_chat_path(tmp_path, chat_tok):
    src = _write(_rows(10), tmp_path / "d.jsonl")
    splits = build_prompts(_cfg(src, use_chat_template=True), chat_tok)
    ex = splits.train[0]
    assert ex.prompt.startswith("<s><|user|>\n\nSummarize the following conversation.") and ex.prompt.endswith("<|assistant|>\n")
    assert ex.input_ids == chat_tok(ex.prompt, add_special_tokens=False).input_ids
    assert ex.input_ids.count(chat_tok.bos_token_id) == 1
    # the plain path keeps the tokenizer's own special tokens (like the notebook's tokenizer.encode)
    plain = build_prompts(_cfg(src), chat_tok).train[0]
    assert plain.input_ids == chat_tok(plain.prompt).input_ids and plain.input_ids[0] == chat_tok.bos_token_id


def test_t5_tokenization_matches_encode(tmp_path, t5_tok):
    src = _write(_rows(5), tmp_path / "d.csv")
    splits = build_prompts(_cfg(src), t5_tok)
    for ex in splits.train + splits.test:
        assert ex.input_ids == t5_tok.encode(ex.prompt)  # the notebook: tokenizer.encode(prompt), ends with </s>
        assert ex.input_ids[-1] == t5_tok.eos_token_id


# --------------------------------------------------------------------------------------------
# Local sources


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json", ".parquet"])
def test_file_formats_give_the_same_prompts(tmp_path, tok, ext):
    rows = _rows(12)
    rows[3]["dialogue"] = "NA"  # pandas would read this as missing; it must stay text (and be filtered as short)
    rows[5]["summary"] = ""
    reference = build_prompts(_cfg(_write(rows, tmp_path / "ref" / "train.csv")), tok)
    as_file = build_prompts(_cfg(_write(rows, tmp_path / f"data{ext}")), tok)
    _write(rows, tmp_path / "folder" / f"train{ext}")
    as_folder = build_prompts(_cfg(tmp_path / "folder"), tok)
    for splits in (as_file, as_folder):
        assert splits.train == reference.train and splits.test == reference.test
        assert (splits.n_rows, splits.n_filtered) == (12, 11)
    loaded = load_dialogue_rows(_cfg(tmp_path / f"data{ext}"))
    assert loaded[3]["dialogue"] == "NA" and loaded[5]["summary"] is None
    assert loaded[0] == {"id": "train_0", "dialogue": rows[0]["dialogue"], "summary": rows[0]["summary"]}


def test_folder_reads_the_configured_split(tmp_path):
    rows = _rows(6)
    _write(rows[:4], tmp_path / "train.csv")
    _write(rows[4:], tmp_path / "test.parquet")
    assert [r["id"] for r in load_dialogue_rows(_cfg(tmp_path))] == ["train_0", "train_1", "train_2", "train_3"]
    assert [r["id"] for r in load_dialogue_rows(_cfg(tmp_path, split="test"))] == ["train_4", "train_5"]


def test_no_summary_no_id_nan_dialogue_and_custom_columns(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"conversation": [_dialogue(300), None, float("nan"), _dialogue(400)]})
    path = tmp_path / "conv.parquet"
    df.to_parquet(path, index=False)
    rows = load_dialogue_rows(_cfg(path, dialogue_column="conversation"))
    assert [r["id"] for r in rows] == ["row_0", "row_1", "row_2", "row_3"]
    assert [r["dialogue"] for r in rows][1:3] == ["", ""]
    assert all(r["summary"] is None for r in rows)
    assert len(filter_rows(rows, 200, 1000)) == 2


def test_json_variants(tmp_path):
    rows = _rows(3)
    columnar = {k: [r[k] for r in rows] for k in rows[0]}
    (tmp_path / "a.json").write_text(json.dumps(columnar))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "c.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # Dataset.to_json writes lines
    for name in ("a.json", "b.json", "c.json"):
        assert load_dialogue_rows(_cfg(tmp_path / name)) == rows


@pytest.fixture
def hub_reachable(monkeypatch):
    """Tests that replace datasets.load_dataset: the reachability probe says the hub answers."""
    monkeypatch.setattr(prompts, "_hub_unreachable", lambda: None)


def test_hub_path_uses_load_dataset(monkeypatch, hub_reachable):
    import datasets

    calls = []

    def fake_load_dataset(source, split):
        calls.append((source, split))
        return datasets.Dataset.from_list(_rows(4))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_dialogue_rows(_cfg("knkarthick/dialogsum", split="validation"))
    assert calls == [("knkarthick/dialogsum", "validation")]
    assert rows == _rows(4)


def test_hub_without_network_is_a_data_error(monkeypatch, hub_reachable):
    import datasets

    def offline(source, split):
        raise ConnectionError(f"Couldn't reach '{source}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    check_data_source(_cfg("knkarthick/dialogsum"))  # cheap: does not contact the hub
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg("knkarthick/dialogsum"))
    msg = _one_line_error(e)
    assert "could not load 'knkarthick/dialogsum' from the hub (no network?)" in msg
    assert "pass a local folder or file with --data" in msg


def test_hub_dataset_without_network_fails_fast_with_the_fix(monkeypatch):
    """One probe of the hub instead of datasets' half-minute of retries; the message names both fixes."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(prompts, "_hub_unreachable", lambda: "ConnectError: [Errno -2] Name or service not known")

    def never(*args, **kwargs):
        raise AssertionError("load_dataset was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg("knkarthick/dialogsum"))
    msg = _one_line_error(e)
    assert "cannot reach the Hugging Face hub to load 'knkarthick/dialogsum'" in msg and "Name or service not known" in msg
    assert "--data" in msg and "HF_HUB_OFFLINE=1" in msg


def test_hub_dataset_with_hf_hub_offline_reads_only_the_cache(monkeypatch):
    """HF_HUB_OFFLINE: no probe (datasets reads its cache); a dataset missing there is one line saying so."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def no_probe():
        raise AssertionError("the hub was probed in offline mode")

    monkeypatch.setattr(prompts, "_hub_unreachable", no_probe)
    monkeypatch.setattr(datasets, "load_dataset", lambda source, split: datasets.Dataset.from_list(_rows(3)))
    assert load_dialogue_rows(_cfg("knkarthick/dialogsum")) == _rows(3)  # a cached copy is used

    def not_cached(source, split):
        raise ConnectionError(f"Couldn't reach '{source}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", not_cached)
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg("knkarthick/dialogsum"))
    msg = _one_line_error(e)
    assert "HF_HUB_OFFLINE is set and 'knkarthick/dialogsum' is not in the Hugging Face cache" in msg and "--data" in msg


# --------------------------------------------------------------------------------------------
# Errors a user can fix: one line, naming what is wrong and the fix


def test_missing_path(tmp_path):
    for source in (tmp_path / "nope", tmp_path / "nope.csv", "./data/dialogsum", "missing.parquet"):
        with pytest.raises(DataError) as e:
            check_data_source(_cfg(source))
        msg = _one_line_error(e)
        assert "does not exist" in msg and "--data" in msg


def test_folder_without_split_file(tmp_path):
    _write(_rows(2), tmp_path / "validation.csv")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as e:
        check_data_source(_cfg(tmp_path))
    msg = _one_line_error(e)
    assert "train.csv" in msg and "validation.csv" in msg and "notes.txt" in msg and "data.split" in msg


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError) as e:
        check_data_source(_cfg(path))
    assert ".txt" in _one_line_error(e)


def test_unknown_packaged_source():
    with pytest.raises(ConfigError) as e:
        check_data_source(_cfg("packaged:dialogsum"))
    msg = _one_line_error(e)
    assert "packaged:dialogsum" in msg and PACKAGED_CHITCHAT in msg


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_missing_dialogue_column(tmp_path, ext):
    rows = [{"id": r["id"], "text": r["dialogue"], "summary": r["summary"]} for r in _rows(3)]
    path = _write(rows, tmp_path / f"d{ext}")
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg(path))
    msg = _one_line_error(e)
    assert "'dialogue'" in msg and "id, text, summary" in msg and "--set data.dialogue_column=NAME" in msg
    assert len(load_dialogue_rows(_cfg(path, dialogue_column="text"))) == 3


def test_filter_leaves_nothing(tmp_path, tok):
    path = _write([{"id": "a", "dialogue": "short", "summary": "s"}], tmp_path / "d.csv")
    with pytest.raises(DataError) as e:
        build_prompts(_cfg(path), tok)
    msg = _one_line_error(e)
    assert "200 < chars <= 1000" in msg and "data.min_chars" in msg and "data.max_chars" in msg


def test_header_only_csv_says_the_file_has_no_rows(tmp_path, tok):
    path = tmp_path / "empty.csv"
    path.write_text("id,dialogue,summary\n")
    with pytest.raises(DataError) as e:
        build_prompts(_cfg(path), tok)
    msg = _one_line_error(e)
    assert f"'{path}' holds no rows" in msg and "--data" in msg
    assert "filter" not in msg and "data.min_chars" not in msg  # no filter setting would help


def test_non_utf8_csv_names_the_encoding_and_the_option(tmp_path):
    rows = [{"id": "a", "dialogue": "#Person1#: Caf\u00e9 cr\u00e8me? " * 12, "summary": "Caf\u00e9."}]
    path = tmp_path / "latin1.csv"
    _write(rows, tmp_path / "utf8.csv")
    path.write_bytes((tmp_path / "utf8.csv").read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg(path))
    msg = _one_line_error(e)
    assert "is not utf-8 text" in msg and "byte 0xe9" in msg and "--set data.encoding=latin-1" in msg
    assert load_dialogue_rows(_cfg(path, encoding="latin-1")) == load_dialogue_rows(_cfg(tmp_path / "utf8.csv"))
    # JSON Lines are read with the same setting
    (tmp_path / "latin1.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    with pytest.raises(DataError, match="data.encoding"):
        load_dialogue_rows(_cfg(tmp_path / "latin1.jsonl"))
    assert load_dialogue_rows(_cfg(tmp_path / "latin1.jsonl", encoding="latin-1"))[0]["dialogue"] == rows[0]["dialogue"]


def test_prompt_too_long(tmp_path, tok):
    path = _write(_rows(5), tmp_path / "d.csv")
    with pytest.raises(DataError) as e:
        build_prompts(_cfg(path, max_prompt_tokens=20), tok)
    msg = _one_line_error(e)
    n = len(tok(NOTEBOOK_TEMPLATE.format(dialogue=_rows(1)[0]["dialogue"])).input_ids)
    assert "'train_0'" in msg and f"{n} tokens" in msg
    assert "lower data.max_chars or raise data.max_prompt_tokens" in msg


def test_no_train_rows_left(tmp_path, tok):
    path = _write(_rows(5), tmp_path / "d.csv")
    with pytest.raises(DataError) as e:
        build_prompts(_cfg(path, max_rows=1), tok)
    assert "data.max_rows" in _one_line_error(e)


def test_bad_max_rows():
    with pytest.raises(ConfigError):
        check_data_source(DataConfig(source=PACKAGED_CHITCHAT, max_rows=0))


# --------------------------------------------------------------------------------------------
# packaged:chitchat (the chitchat-dataset package, no network)



def test_chitchat_rows_and_rendering(tok):
    pytest.importorskip("chitchat_dataset")
    cfg = _cfg(PACKAGED_CHITCHAT)
    check_data_source(cfg)
    rows = load_dialogue_rows(cfg)
    assert len(rows) == 7168
    assert len({r["id"] for r in rows}) == 7168 and all(r["summary"] is None for r in rows)
    first = rows[0]
    assert first["id"] == "a07edb12-6b91-4138-b11e-02421888d699"
    lines = first["dialogue"].split("\n")
    assert lines[0] == "#Person1#: Hello How are you doing today?"
    assert lines[1] == "#Person2#: whats up MD im doing good how are you doing?"
    for r in rows[:500]:
        for i, line in enumerate(r["dialogue"].split("\n") if r["dialogue"] else []):
            assert line.startswith(f"#Person{1 + i % 2}#: ")  # speakers alternate, numbered by appearance

    kept = filter_rows(rows, 200, 1000)
    assert len(kept) == 1386  # of 7168: 3271 are <= 200 chars (1150 are single-speaker openers), 2511 > 1000
    splits = build_prompts(dataclasses.replace(cfg, max_rows=100, max_prompt_tokens=4096), tok)
    assert (len(splits.train), len(splits.test)) == (80, 20)
    assert splits.train[0].prompt.startswith("\nSummarize the following conversation.\n\n#Person1#: ")
    assert splits.train[0].reference is None


def test_render_chitchat_three_speakers_and_whitespace():
    conv = {
        "messages": [
            [{"text": "hi\nthere", "sender": "a"}, {"text": " you ", "sender": "a"}],
            [{"text": "hello", "sender": "b"}],
            [{"text": "me too", "sender": "c"}],
            [{"text": "", "sender": "a"}],
            [{"text": "bye", "sender": "a"}],
        ]
    }
    assert prompts.render_chitchat(conv) == "#Person1#: hi there you\n#Person2#: hello\n#Person3#: me too\n#Person1#: bye"


@pytest.mark.parametrize("value, kind", [
    (["#Person1#: Hi.", "#Person2#: Hello."], "a list"),
    (int("9" * 250), "a number"),
    ({"text": "hi"}, "an object"),
])
def test_a_dialogue_that_is_not_text_is_refused_with_its_row(tmp_path, value, kind):
    """A JSONL dialogue that is a list of turns (or a number, an object) would be trained on as its
    Python spelling; it is refused, with the row and what to write instead."""
    path = tmp_path / "talks.jsonl"
    rows = [{"id": "a", "dialogue": "#Person1#: " + "fine words " * 30}, {"id": "b", "dialogue": value}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg(path))
    assert f"row 2: 'dialogue' is {kind}, not text" in str(e.value) and "\n" not in str(e.value)
    if kind == "a list":
        assert "join the turns into one text" in str(e.value)


def test_a_csv_whose_rows_have_more_fields_than_its_header_is_refused_not_shifted(tmp_path):
    """pandas took the first field as an index and shifted every column: training would have read the
    wrong column, and the error blamed the length filter."""
    path = tmp_path / "extra.csv"
    path.write_text("id,dialogue\n1,#Person1#: hello there,extra\n2,#Person1#: fine,more\n")
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg(path))
    assert "have more fields than its header (id, dialogue)" in str(e.value) and "quote fields that hold commas" in str(e.value)


def test_an_empty_jsonl_says_it_holds_no_rows(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        load_dialogue_rows(_cfg(path))


def test_every_dialogue_cell_empty_names_the_column_not_the_length_filter(tmp_path):
    from detoxrl.prompts import split_and_select

    path = tmp_path / "blank.csv"
    path.write_text("id,dialogue,text\n1,,#Person1#: hi\n2,,#Person1#: yo\n")
    cfg = _cfg(path)
    with pytest.raises(DataError) as e:
        split_and_select(cfg, load_dialogue_rows(cfg), None)
    assert "every 'dialogue' cell" in str(e.value) and "data.dialogue_column" in str(e.value) and "length filter" not in str(e.value)


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl"])
def test_json_nested_too_deeply_is_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError) as e:
        load_dialogue_rows(_cfg(path))
    assert "nested too deeply" in str(e.value) and "\n" not in str(e.value)
