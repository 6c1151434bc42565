"""Prompts: load dialogues, filter them by length, wrap them in the instruction, tokenize, split.

The pipeline follows the reference notebook's ``build_dataset``::

    rows = load_dialogue_rows(cfg)                       # hub id, local folder/file, packaged:chitchat
    kept = filter_rows(rows, cfg.min_chars, cfg.max_chars)   # min_chars < len(dialogue) <= max_chars
    train, test = split_rows(kept, cfg.test_fraction)    # unshuffled: the last 20% is the test set
    prompt = render_prompt(dialogue, cfg, tokenizer)     # the notebook's template (or a chat turn)

:func:`build_prompts` runs all of it and tokenizes in batches. :func:`check_data_source` does the
cheap checks (paths, file names, packaged names) before any model is loaded.

Sources (``cfg.source``):

- a Hugging Face hub id such as ``knkarthick/dialogsum``: ``datasets.load_dataset(id, split=...)``;
- a local folder holding ``<split>.csv``, ``<split>.jsonl``, ``<split>.json`` or ``<split>.parquet``
  (or shards ``<split>-*.<ext>``, read in name order), laid out like the hub copy of DialogSum;
- a local ``.csv``, ``.jsonl``, ``.json`` or ``.parquet`` file (``cfg.split`` is ignored);
- ``packaged:chitchat``: the 7,168 English conversations of the PyPI package ``chitchat-dataset``,
  rendered like DialogSum (``#Person1#: ...`` / ``#Person2#: ...``), without summaries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from detoxrl import runfiles
from detoxrl.config import PACKAGED_CHITCHAT, DataConfig
from detoxrl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: File types a local source may have, in the order a folder's ``<split>.<ext>`` is looked for.
DATA_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
PACKAGED_SOURCES = (PACKAGED_CHITCHAT,)

_TOKENIZE_BATCH = 4096


@dataclass
class PromptExample:
    id: str
    dialogue: str
    reference: str | None  # the human summary when the data has one (for ROUGE)
    prompt: str  # the text fed to the model (template applied; chat template if configured)
    input_ids: list[int]


@dataclass
class PromptSplits:
    train: list[PromptExample]
    test: list[PromptExample]
    source: str
    n_rows: int  # rows read
    n_filtered: int  # rows kept by the length filter
    selection: dict | None = None  # counts before/after the challenging-prompt selection (None: no selection)

    def stats(self) -> dict:
        """Counts and length distributions (tokens of the prompts, characters of the dialogues)."""
        examples = self.train + self.test
        return {
            "train": len(self.train),
            "test": len(self.test),
            "rows": self.n_rows,
            "kept": self.n_filtered,
            "selection": self.selection,
            "prompt_tokens": _summary([len(e.input_ids) for e in examples]),
            "dialogue_chars": _summary([len(e.dialogue) for e in examples]),
        }


@dataclass(frozen=True)
class SplitRows:
    """Dialogue rows through the length filter, ``max_rows``, the split and the challenging-prompt
    selection (:func:`split_and_select`), before they become prompts. ``rows``: every row read."""

    rows: list[dict]
    train: list[dict]
    test: list[dict]
    n_rows: int  # rows read
    n_kept: int  # rows kept by the length filter
    selection: dict | None = None  # counts before/after the selection (None: no selection)


def split_fingerprint(split: SplitRows) -> dict[str, Any]:
    """What a run trained on and held out, to pin it: for each part, the number of rows and a sha256 of
    their ids and dialogues in order. Evaluating a run later on data whose held-out part differs (a file
    that shrank moves train rows into the held-out part) is refused by :func:`check_pinned_split`."""
    def digest(rows: list[dict]) -> dict[str, Any]:
        h = hashlib.sha256()
        for r in rows:
            h.update(json.dumps([r["id"], r["dialogue"]], ensure_ascii=False).encode("utf-8"))
        return {"rows": len(rows), "sha256": h.hexdigest()}

    return {"rows_read": split.n_rows, "train": digest(split.train), "test": digest(split.test)}


def check_pinned_split(pinned: dict[str, Any] | None, split: SplitRows, source: str, run: str) -> None:
    """The held-out and train parts of ``split`` are those the run recorded (``pinned``, its split.json);
    else one line naming what changed. A run without a record (older detoxrl) is not checked."""
    if not pinned:
        return
    now = split_fingerprint(split)
    changed = [part for part in ("test", "train") if pinned.get(part) != now[part]]
    if changed:
        was = pinned.get("test", {}).get("rows")
        raise DataError(
            f"the data of run '{run}' has changed since it trained ('{source}': {split.n_rows} rows read, {pinned.get('rows_read')} then; "
            f"held-out prompts {now['test']['rows']}, {was} then; changed: {' and '.join(changed)} part): rows it trained on could be "
            "scored as held out; evaluate with the data it trained on, or another file entirely with --data FILE --all-rows")


def _summary(values: list[int]) -> dict:
    if not values:
        return {"min": None, "mean": None, "p50": None, "p95": None, "max": None}
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return {
        "min": int(a.min()),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


# --------------------------------------------------------------------------------------------
# Where the data comes from


def _looks_local(source: str) -> bool:
    """True for something that can only be a path (a hub id is ``name`` or ``owner/name``)."""
    return (
        source.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in source
        or source.count("/") >= 2
        or Path(source).suffix.lower() in DATA_EXTENSIONS
    )


def _resolve(cfg: DataConfig) -> tuple[str, Any]:
    """Classify ``cfg.source``: ("packaged", name) | ("folder", Path) | ("file", Path) | ("hub", id)."""
    source = cfg.source.strip()
    if not source:
        raise ConfigError("data.source is empty; pass a hub id, a local folder or file with --data, or packaged:chitchat")
    if source.startswith("packaged:"):
        if source not in PACKAGED_SOURCES:
            raise ConfigError(f"unknown packaged data set '{source}'; choose one of: {', '.join(PACKAGED_SOURCES)}")
        return "packaged", source
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.exists():
        return "file", path
    if _looks_local(source):
        raise DataError(
            f"data source '{source}' does not exist; pass an existing folder or .csv/.jsonl/.json/.parquet file with --data"
        )
    return "hub", source


def _split_files(folder: Path, split: str) -> list[Path]:
    """``<split>.<ext>``, else shards ``<split>-*.<ext>`` of the first extension that has any."""
    for ext in DATA_EXTENSIONS:
        single = folder / f"{split}{ext}"
        if single.is_file():
            return [single]
    for ext in DATA_EXTENSIONS:
        shards = sorted(p for p in folder.glob(f"{split}-*{ext}") if p.is_file())
        if shards:
            return shards
    return []


def _found(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing (the folder is empty)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_data_source(cfg: DataConfig) -> None:
    """Cheap checks of ``cfg`` before any model loads (no data is read, the hub is not contacted)."""
    if cfg.max_rows is not None and cfg.max_rows < 1:
        raise ConfigError(f"data.max_rows must be a positive number of rows or none, got {cfg.max_rows}")
    if cfg.max_prompt_tokens < 1:
        raise ConfigError(f"data.max_prompt_tokens must be positive, got {cfg.max_prompt_tokens}")
    kind, where = _resolve(cfg)
    if kind == "packaged":
        if where == PACKAGED_CHITCHAT and importlib.util.find_spec("chitchat_dataset") is None:
            raise DataError("packaged:chitchat needs the PyPI package chitchat-dataset; run: pip install chitchat-dataset==0.9.0")
    elif kind == "folder":
        if not _split_files(where, cfg.split):
            wanted = "/".join(f"{cfg.split}{ext}" for ext in DATA_EXTENSIONS)
            raise DataError(
                f"folder '{where}' has no {wanted} for split '{cfg.split}' (found: {_found(where)}); "
                f"add that file, choose another split with --set data.split=NAME, or pass the file itself with --data"
            )
    elif kind == "file":
        if where.suffix.lower() not in DATA_EXTENSIONS:
            raise DataError(
                f"data file '{where}' has an unsupported type '{where.suffix or '(none)'}'; "
                f"convert it to .csv, .jsonl, .json or .parquet"
            )


# --------------------------------------------------------------------------------------------
# Reading rows


def _text(value: Any) -> str:
    """A cell as text; missing values (None, NaN) become ''."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value if isinstance(value, str) else str(value)


def _text_cell(value: Any, where: str, row: int, column: str) -> str:
    """A dialogue or summary cell, which must be text (or missing): a list of turns, a number or an object
    would otherwise be trained on as its Python spelling ("['#Person1#: Hi', ...]")."""
    if value is not None and not isinstance(value, str) and not (isinstance(value, float) and math.isnan(value)):
        kind = {list: "a list", dict: "an object", bool: "true/false"}.get(type(value), "a number")
        fix = (" (join the turns into one text, one '#PersonN#: ...' line each)" if isinstance(value, list) else "")
        raise DataError(f"{where} row {row + 1}: '{column}' is {kind}, not text{fix}; write it as a string")
    return _text(value)


def _rows_from_columns(columns: dict[str, list], cfg: DataConfig, where: str) -> list[dict]:
    """Turn column lists into rows ``{"id", "dialogue", "summary"}``, checking the dialogue column."""
    quoted = where if where.startswith("'") else f"'{where}'"
    empty = DataError(f"{quoted} holds no rows (a header only?); add dialogues to it (one per row, a "
                      f"'{cfg.dialogue_column}' column), or pass another source with --data")
    if not columns:
        raise empty
    if cfg.dialogue_column in columns and not columns[cfg.dialogue_column]:
        raise empty
    if cfg.dialogue_column not in columns:
        found = ", ".join(columns) or "none"
        raise DataError(
            f"{where} has no column '{cfg.dialogue_column}' (columns: {found}); "
            f"name the dialogue column with --set data.dialogue_column=NAME"
        )
    dialogues = columns[cfg.dialogue_column]
    summaries = columns.get(cfg.summary_column)
    if summaries is None and cfg.summary_column != DataConfig.summary_column:
        logger.warning("%s has no summary column '%s'; ROUGE against references is skipped", where, cfg.summary_column)
    ids = columns.get("id")
    rows = []
    for i, dialogue in enumerate(dialogues):
        summary = _text_cell(summaries[i], where, i, cfg.summary_column) if summaries is not None else ""
        row_id = _text(ids[i]) if ids is not None else ""
        rows.append({"id": row_id or f"row_{i}", "dialogue": _text_cell(dialogue, where, i, cfg.dialogue_column),
                     "summary": summary or None})
    return rows


def _records_to_columns(records: list, where: str) -> dict[str, list]:
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{where} must hold one JSON object per row (like {{\"id\": ..., \"dialogue\": ...}}); fix the file")
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    return {name: [r.get(name) for r in records] for name in names}


def _read_json_lines(text: str, path: Path) -> list:
    records = []
    for line in runfiles.parse_jsonl(text):
        if line.error is not None:
            raise DataError(f"{path} line {line.lineno} is not valid JSON ({line.error.msg}); fix that line") from line.error
        records.append(line.value)
    return records


def _read_file(path: Path, cfg: DataConfig) -> dict[str, list]:
    """One local file as ``{column: values}``; JSON nested deeper than Python's parser goes is one line."""
    try:
        return _read_file_columns(path, cfg)
    except RecursionError:
        raise DataError(f"'{path}' holds JSON nested too deeply to read; a data file holds one flat object per row "
                        "({\"dialogue\": \"...\"})") from None


def _read_file_columns(path: Path, cfg: DataConfig) -> dict[str, list]:
    ext = path.suffix.lower()
    try:
        if ext == ".csv":
            import pandas as pd

            # Everything as text, and no "NA"/"None" strings turned into NaN: dialogues stay verbatim.
            # index_col=False: rows with more fields than the header would otherwise shift every column
            # (pandas takes the first as an index); they are an error here instead.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding=cfg.encoding,
                                 index_col=False)
            if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                raise DataError(f"rows of '{path}' have more fields than its header ({', '.join(map(str, df.columns))}): the "
                                "columns would shift; quote fields that hold commas, or fix the header")
            return {str(c): df[c].tolist() for c in df.columns}
        if ext == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            wanted = [c for c in ("id", cfg.dialogue_column, cfg.summary_column) if c in names]
            if cfg.dialogue_column not in names:
                return {name: [] for name in names}  # the caller names the missing column
            table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
            return {name: table.column(name).to_pylist() for name in table.column_names}
        text = path.read_text(encoding=cfg.encoding)
    except UnicodeDecodeError as e:
        # Say which byte and how to fix it: most such files are Latin-1 / Windows-1252 exports.
        raise DataError(
            f"'{path}' is not {cfg.encoding} text (byte 0x{e.object[e.start]:02x} at position {e.start} cannot be decoded); "
            f"re-save it as UTF-8, or name its encoding with --set data.encoding=latin-1 (or cp1252, ...)"
        ) from None
    except OSError as e:
        raise DataError(f"could not read '{path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the file") from e
    except DataError:
        raise
    except Exception as e:  # pandas / pyarrow parse errors
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not parse '{path}' as {ext[1:]} ({type(e).__name__}: {first[:200]}); fix or re-export the file") from e
    if ext == ".jsonl":
        return _records_to_columns(_read_json_lines(text, path), str(path))
    # .json: a list of row objects, {column: [values]}, {"data": [rows]}, or JSON Lines
    # (``datasets.Dataset.to_json`` writes JSON Lines into .json files).
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _records_to_columns(_read_json_lines(text, path), str(path))
    if isinstance(data, list):
        return _records_to_columns(data, str(path))
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == len(data) and lists and len({len(v) for v in lists.values()}) == 1 and not any(
            isinstance(x, dict) for v in lists.values() for x in v[:1]
        ):
            return lists  # columnar
        if len(data) == 1 and lists:
            return _records_to_columns(next(iter(lists.values())), str(path))
        return _records_to_columns([data], str(path))
    raise DataError(f"{path} must hold a JSON list of row objects; fix the file")


def _read_local(paths: list[Path], cfg: DataConfig, where: str) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        file_rows = _rows_from_columns(_read_file(path, cfg), cfg, where if len(paths) == 1 else str(path))
        if len(paths) > 1:
            for row in file_rows:
                if row["id"].startswith("row_"):
                    row["id"] = f"{path.stem}:{row['id']}"
        rows.extend(file_rows)
    return rows


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it answers.

    One request, no retries, 5 s at most: without network, ``datasets.load_dataset`` retries for
    about half a minute before it fails with the same news.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as e:  # DNS, refused connection, timeout, proxy...
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no answer'}"
    return None


def _read_hub(cfg: DataConfig) -> list[dict]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"loading '{cfg.source}' from the hub needs the datasets package; run: pip install datasets") from e
    # HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE): datasets reads its cache and never the network.
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline:
        reason = _hub_unreachable()
        if reason:
            raise DataError(
                f"cannot reach the Hugging Face hub to load '{cfg.source}' ({reason}); pass a local folder or file with --data, "
                "or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache"
            )
    try:
        ds = datasets.load_dataset(cfg.source, split=cfg.split)
    except Exception as e:  # network, missing repo, missing split, ...
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        if isinstance(e, ValueError) and "split" in detail.lower():
            raise DataError(
                f"'{cfg.source}' on the hub has no split '{cfg.split}' ({detail}); choose one with --set data.split=NAME"
            ) from e
        if offline:
            raise DataError(
                f"HF_HUB_OFFLINE is set and '{cfg.source}' is not in the Hugging Face cache [{type(e).__name__}: {detail}]; "
                "pass a local folder or file with --data, or unset HF_HUB_OFFLINE once to download it"
            ) from e
        raise DataError(
            f"could not load '{cfg.source}' from the hub (no network?); pass a local folder or file with --data "
            f"[{type(e).__name__}: {detail}]"
        ) from e
    names = list(ds.column_names)
    wanted = [c for c in dict.fromkeys(("id", cfg.dialogue_column, cfg.summary_column)) if c in names]
    if cfg.dialogue_column not in names:
        return _rows_from_columns({n: [] for n in names}, cfg, f"'{cfg.source}'")
    return _rows_from_columns({c: list(ds[c]) for c in wanted}, cfg, f"'{cfg.source}'")


_CHITCHAT_CACHE: list[tuple[str, str]] | None = None


def _chitchat_path() -> Path:
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise DataError("packaged:chitchat needs the PyPI package chitchat-dataset; run: pip install chitchat-dataset==0.9.0")
    path = Path(spec.origin).parent / "dataset.json"
    if not path.is_file():
        raise DataError(f"chitchat-dataset is installed without its dataset.json ({path}); reinstall: pip install --force-reinstall chitchat-dataset==0.9.0")
    return path


def render_chitchat(conversation: dict) -> str:
    """One chitchat conversation as DialogSum-style lines ``#Person1#: ...`` / ``#Person2#: ...``.

    The package stores a conversation as ``{"messages": [[{"text", "sender", ...}, ...], ...]}``:
    each inner list is one turn (consecutive messages of one sender). Speakers are numbered in order
    of appearance; a turn's messages are joined with a space (the package's own default).
    """
    speakers: dict[str, int] = {}
    lines = []
    for turn in conversation.get("messages", []):
        if not turn:
            continue
        sender = str(turn[0].get("sender", ""))
        number = speakers.setdefault(sender, len(speakers) + 1)
        text = " ".join(" ".join(str(m.get("text", "")).split()) for m in turn).strip()
        if text:
            lines.append(f"#Person{number}#: {text}")
    return "\n".join(lines)


def _read_chitchat() -> list[dict]:
    """The package's conversations in file order; id = the conversation's key; no summaries."""
    global _CHITCHAT_CACHE
    if _CHITCHAT_CACHE is None:
        with open(_chitchat_path(), encoding="utf-8") as f:
            data = json.load(f)
        _CHITCHAT_CACHE = [(str(key), render_chitchat(conv)) for key, conv in data.items()]
    return [{"id": key, "dialogue": dialogue, "summary": None} for key, dialogue in _CHITCHAT_CACHE]


def load_dialogue_rows(cfg: DataConfig) -> list[dict]:
    """All rows of the source as ``{"id": str, "dialogue": str, "summary": str | None}``, in order.

    Empty or missing dialogues are kept as ``""`` (the length filter drops them); ``summary`` is None
    where the data has no summary column or the cell is empty. ``packaged:chitchat`` has one split
    only: ``cfg.split`` is ignored for it, as it is for a single local file.
    """
    check_data_source(cfg)
    kind, where = _resolve(cfg)
    if kind == "packaged":
        return _read_chitchat()
    if kind == "folder":
        files = _split_files(where, cfg.split)
        return _read_local(files, cfg, str(files[0]) if len(files) == 1 else f"'{where}'")
    if kind == "file":
        return _read_local([where], cfg, f"'{where}'")
    return _read_hub(cfg)


# --------------------------------------------------------------------------------------------
# Filter, split, render


def filter_rows(rows: Iterable[dict], min_chars: int, max_chars: int) -> list[dict]:
    """Rows with ``min_chars < len(dialogue) <= max_chars`` (the notebook's filter), in order.

    Empty or whitespace-only dialogues are always dropped.
    """
    return [r for r in rows if min_chars < len(r["dialogue"]) <= max_chars and r["dialogue"].strip()]


def split_rows(rows: list, test_fraction: float) -> tuple[list, list]:
    """Unshuffled split like ``train_test_split(test_size=test_fraction, shuffle=False)``.

    ``n_test = ceil(test_fraction * n)``: the first ``n - n_test`` rows train, the rest test.
    (The product is rounded to 9 decimals first, so 0.2 * 15 is 3 and not 3.0000000000000004.)
    """
    rows = list(rows)
    n = len(rows)
    n_test = min(n, math.ceil(round(test_fraction * n, 9)))
    return rows[: n - n_test], rows[n - n_test :]


def _format(template: str, dialogue: str) -> str:
    try:
        return template.format(dialogue=dialogue)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"data.template cannot be filled ({type(e).__name__}: {e}); use {{dialogue}} for the conversation "
            f"and write literal braces as {{{{ and }}}}"
        ) from e


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


_warned_no_chat_template = False


def _wants_chat(cfg: DataConfig, tokenizer: Any) -> bool:
    global _warned_no_chat_template
    if not cfg.use_chat_template:
        return False
    if _has_chat_template(tokenizer):
        return True
    if not _warned_no_chat_template:
        logger.warning("data.use_chat_template is set but the tokenizer has no chat template; using the plain template")
        _warned_no_chat_template = True
    return False


def render_prompt(dialogue: str, cfg: DataConfig, tokenizer: Any = None) -> str:
    """``cfg.template`` filled with the dialogue, wrapped as a user turn when a chat template applies."""
    text = _format(cfg.template, dialogue)
    if _wants_chat(cfg, tokenizer):
        return tokenizer.apply_chat_template(_chat_turns(text, cfg), tokenize=False, add_generation_prompt=True)
    return text


def _chat_turns(text: str, cfg: DataConfig) -> list[dict[str, str]]:
    """The prompt as chat messages: the optional system turn, then the user turn."""
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + [{"role": "user", "content": text}]


def _render_all(dialogues: list[str], cfg: DataConfig, tokenizer: Any) -> tuple[list[str], bool]:
    """All prompts, and whether the chat template was applied."""
    texts = [_format(cfg.template, d) for d in dialogues]
    if not _wants_chat(cfg, tokenizer) or not texts:
        return texts, False
    rendered = tokenizer.apply_chat_template(
        [_chat_turns(t, cfg) for t in texts], tokenize=False, add_generation_prompt=True
    )
    return list(rendered), True


def _tokenize(prompts: list[str], tokenizer: Any, chat: bool) -> list[list[int]]:
    """Token ids of each prompt, in batches; no second BOS when the chat template already wrote one."""
    add_special_tokens = True
    bos = getattr(tokenizer, "bos_token", None)
    if chat and bos and prompts and all(p.startswith(bos) for p in prompts):
        add_special_tokens = False
    ids: list[list[int]] = []
    for start in range(0, len(prompts), _TOKENIZE_BATCH):
        batch = prompts[start : start + _TOKENIZE_BATCH]
        ids.extend(list(x) for x in tokenizer(batch, add_special_tokens=add_special_tokens)["input_ids"])
    return ids


def select_challenging(
    train: list[dict],
    test: list[dict],
    cfg: DataConfig,
    dialogue_toxicity: Callable[[list[str]], list[float]] | None,
    *,
    require_train: bool = True,
) -> tuple[list[dict], list[dict], dict | None]:
    """Keep, within each part of the split, the rows whose dialogue toxicity is >= the threshold.

    Returns ``(train, test, counts)``; ``counts`` is None when ``cfg.min_dialogue_toxicity`` is None.
    A part left empty is a :class:`DataError` that says how many rows the threshold kept.
    """
    threshold = cfg.min_dialogue_toxicity
    if threshold is None:
        return train, test, None
    if dialogue_toxicity is None:
        raise ConfigError("data.min_dialogue_toxicity is set but no dialogue scorer was given (detoxrl.selection.dialogue_toxicity_for)")
    scores = dialogue_toxicity([r["dialogue"] for r in train + test])
    keep_train = [r for r, s in zip(train, scores[: len(train)]) if s >= threshold]
    keep_test = [r for r, s in zip(test, scores[len(train) :]) if s >= threshold]
    counts = {
        "threshold": threshold,
        "scorer": cfg.selection_scorer,
        "train_before": len(train),
        "test_before": len(test),
        "train": len(keep_train),
        "test": len(keep_test),
    }
    if (require_train and not keep_train) or not keep_test:
        raise DataError(
            f"data.min_dialogue_toxicity={threshold:g} (scored by {cfg.selection_scorer}) keeps {len(keep_train)} of "
            f"{len(train)} train and {len(keep_test)} of {len(test)} test dialogues; lower the threshold "
            "(--set data.min_dialogue_toxicity=X) or use more data"
        )
    return keep_train, keep_test, counts


def split_and_select(
    cfg: DataConfig,
    rows: list[dict] | None = None,
    dialogue_toxicity: Callable[[list[str]], list[float]] | None = None,
    *,
    require_train: bool = True,
) -> tuple[list[dict], list[dict], int, int, dict | None]:
    """Rows -> length filter -> ``max_rows`` -> unshuffled split -> challenging selection in each part.

    Returns ``(train_rows, test_rows, n_rows_read, n_kept_by_filter, selection_counts)``. Every
    mistake (an empty filter, no train row, a selection that empties a part) is a one-line error.
    """
    rows = load_dialogue_rows(cfg) if rows is None else rows
    if not rows:  # e.g. a CSV with a header only: no filter setting would help
        raise DataError(f"'{cfg.source}' holds no rows (a header only?); add dialogues to it, or pass another source with --data")
    kept = filter_rows(rows, cfg.min_chars, cfg.max_chars)
    if not any(r["dialogue"].strip() for r in rows):  # no filter setting would help
        raise DataError(f"every '{cfg.dialogue_column}' cell of '{cfg.source}' is empty ({len(rows)} rows); name the column "
                        "that holds the dialogues with --set data.dialogue_column=NAME, or fill it in")
    if not kept:
        raise DataError(
            f"no dialogue passes the length filter {cfg.min_chars} < chars <= {cfg.max_chars} in '{cfg.source}' "
            f"({len(rows)} rows); widen it with --set data.min_chars=N / data.max_chars=N"
        )
    selected = kept if cfg.max_rows is None else kept[: cfg.max_rows]
    train, test = split_rows(selected, cfg.test_fraction)
    if require_train and not train:
        if len(selected) < len(kept):
            raise DataError(
                f"data.max_rows={cfg.max_rows} keeps {len(selected)} dialogue(s): none is left for training after the "
                f"{cfg.test_fraction:g} test split; raise data.max_rows (--set data.max_rows=N)"
            )
        raise DataError(
            f"only {len(selected)} dialogue(s) of '{cfg.source}' pass the filter {cfg.min_chars} < chars <= {cfg.max_chars}: "
            f"none is left for training after the {cfg.test_fraction:g} test split; "
            "widen the filter with --set data.min_chars=N / data.max_chars=N"
        )
    train, test, counts = select_challenging(train, test, cfg, dialogue_toxicity, require_train=require_train)
    return train, test, len(rows), len(kept), counts


def build_prompts(
    cfg: DataConfig,
    tokenizer: Any,
    dialogue_toxicity: Callable[[list[str]], list[float]] | None = None,
    *,
    rows: list[dict] | None = None,
    require_train: bool = True,
) -> PromptSplits:
    """Load, filter, cap at ``cfg.max_rows``, split, select challenging prompts, render and tokenize.

    ``dialogue_toxicity`` scores dialogues for ``cfg.min_dialogue_toxicity`` (see
    :func:`detoxrl.selection.dialogue_toxicity_for`); ``require_train=False`` allows an empty train
    part (evaluation of a whole file, ``test_fraction=1``).
    """
    rows = load_dialogue_rows(cfg) if rows is None else rows
    split = SplitRows(rows, *split_and_select(cfg, rows, dialogue_toxicity, require_train=require_train))
    return prompts_from_split(cfg, split, tokenizer)


def prompts_from_split(cfg: DataConfig, split: SplitRows, tokenizer: Any) -> PromptSplits:
    """The prompts of rows already filtered, split and selected (:func:`split_and_select`): rendered
    and tokenized, nothing read or scored again."""
    examples = prompt_examples(split.train + split.test, cfg, tokenizer)
    train, test = examples[: len(split.train)], examples[len(split.train) :]
    return PromptSplits(train=train, test=test, source=cfg.source, n_rows=split.n_rows, n_filtered=split.n_kept,
                        selection=split.selection)


def prompt_examples(rows: list[dict], cfg: DataConfig, tokenizer: Any, *, fix: str = "lower data.max_chars or raise data.max_prompt_tokens") -> list[PromptExample]:
    """Rows ``{"id", "dialogue", "summary"}`` as prompts: the template (and chat template), tokenized
    in batches. A prompt above ``cfg.max_prompt_tokens`` is an error naming the row and ``fix``.

    Every prompt detoxrl feeds a policy (training, evaluation, ``summarize``) is made here."""
    prompts, chat = _render_all([r["dialogue"] for r in rows], cfg, tokenizer)
    ids = _tokenize(prompts, tokenizer, chat)
    too_long = [i for i, x in enumerate(ids) if len(x) > cfg.max_prompt_tokens]
    if too_long:
        i = too_long[0]
        raise DataError(
            f"the prompt of row '{rows[i]['id']}' has {len(ids[i])} tokens, above data.max_prompt_tokens="
            f"{cfg.max_prompt_tokens} ({len(too_long)} of {len(ids)} prompts are too long); {fix}"
        )
    return [
        PromptExample(id=r["id"], dialogue=r["dialogue"], reference=r.get("summary"), prompt=p, input_ids=x)
        for r, p, x in zip(rows, prompts, ids)
    ]
