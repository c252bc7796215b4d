"""Records, file IO and batching.

Two record kinds, read from TRL's standard dataset formats so the same files work in both libraries:
- `Demo`: a demonstration, prompt-completion ``{"prompt", "completion"}`` (``response`` is accepted for
  ``completion``).
- `Pair`: a preference, ``{"prompt", "chosen", "rejected"}``, or implicit-prompt ``{"chosen", "rejected"}``.
Online methods read prompt-only rows ``{"prompt"}`` (`load_prompts`). Files are JSONL, JSON, CSV or Parquet, or a
dataset folder saved with ``save_to_disk``.

Token layout used everywhere in preftune: ``input_ids = prompt_ids + response_ids + [eos]``, with a
``response_mask`` that is 1 exactly on the response tokens (and the eos), 0 on the prompt and padding.
Loss functions score ``labels = input_ids[:, 1:]`` with ``logits[:, :-1]``, so the prompt is masked out
of every loss by construction.

Prompts are plain text everywhere (tasks, files, rewards). When the tokenizer has a chat template (an
instruction-tuned model such as SmolLM2), `prompt_token_ids` — the one place prompts become tokens, for training
batches and for sampling alike — wraps each prompt as a user turn followed by the assistant header, so the model
sees the conversation format it was tuned on and the response is the assistant's reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """A data file or dataset is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Demo:
    prompt: str
    response: str


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


RECORD_FIELDS = {Demo: ("prompt", "completion"), Pair: ("prompt", "chosen", "rejected")}
TABULAR_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet"}  # read by `datasets`


def implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's implicit-prompt preference rows hold two full texts that share their prompt: split at the first
    character where they differ, and when that follows a space, give the space to the responses (as TRL's
    ``extract_prompt`` does, so the same file means the same pairs in both libraries)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _strings(row: dict, names: Sequence[str], where: str) -> None:
    bad = [f for f in names if not isinstance(row[f], str)]
    if bad:
        raise DataError(f"{where}: field(s) {bad} must be strings")
    for name in names:
        _check_text(row[name], where, name)


def _check_text(text: str, where: str, name: str) -> None:
    """Text a tokenizer can read: JSON's ``\\ud800`` escapes give Python strings with lone surrogates, which
    are not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: field {name!r} holds a lone surrogate ({text[e.start]!r} at character {e.start}), "
                        f"not Unicode text") from None


def check_degenerate(records: Sequence, wheres: Sequence[str], allow: bool = False) -> int:
    """Count the rows that teach nothing — a demonstration whose prompt and completion are both empty, a pair
    whose chosen and rejected responses are the same — and refuse them unless ``allow`` (``allow_degenerate``),
    naming the first ones. Returns how many there were."""
    bad = [(where, "empty prompt and completion" if isinstance(r, Demo) else "chosen == rejected")
           for r, where in zip(records, wheres)
           if (isinstance(r, Demo) and not (r.prompt + r.response).strip())
           or (isinstance(r, Pair) and r.chosen == r.rejected)]
    if bad and not allow:
        listed = "; ".join(f"{where}: {why}" for where, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} of {len(records)} rows are degenerate ({listed}): they train on nothing. "
                        f"Remove them, or pass --allow-degenerate (config field 'allow_degenerate') to keep them")
    if bad:
        import warnings

        warnings.warn(f"{len(bad)} of {len(records)} rows are degenerate (first: {bad[0][0]}: {bad[0][1]}); kept "
                      f"because allow_degenerate is set", stacklevel=2)
    return len(bad)


def _record_from_dict(kind: type, row: object, where: str):
    """One row in TRL's standard formats: prompt-completion (``response`` accepted for ``completion``) for `Demo`,
    preference with an explicit or implicit prompt for `Pair`."""
    fields = RECORD_FIELDS[kind]
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields {list(fields)}, got {type(row).__name__}")
    if "messages" in row or (kind is Demo and "text" in row and "prompt" not in row):
        raise DataError(f"{where}: conversational and language-modelling rows (messages / text) are not supported "
                        f"yet; give {list(fields)}")
    if kind is Demo:
        completion = "completion" if "completion" in row else "response"
        missing = [f for f, name in (("prompt", "prompt"), ("completion", completion)) if name not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}; a demonstration needs {list(fields)} "
                            f"(or 'response' for 'completion')")
        _strings(row, ("prompt", completion), where)
        return Demo(row["prompt"], row[completion])
    missing = [f for f in ("chosen", "rejected") if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; a preference pair needs {list(fields)} (or chosen and "
                        f"rejected alone, which share their prompt)")
    if "prompt" not in row:
        _strings(row, ("chosen", "rejected"), where)
        return Pair(*implicit_prompt(row["chosen"], row["rejected"]))
    _strings(row, fields, where)
    return Pair(row["prompt"], row["chosen"], row["rejected"])


# how a file that is not UTF-8 JSONL starts, and what it is
NOT_JSONL_MAGIC = {b"\x1f\x8b": "gzip-compressed (decompress it first)", b"\xff\xfe": "UTF-16 text (save it as UTF-8)",
                   b"\xfe\xff": "UTF-16 text (save it as UTF-8)", b"PK\x03\x04": "a zip archive (extract it first)"}


def _jsonl_rows(path: Path) -> Iterable[tuple[str, object]]:
    with path.open("rb") as f:
        start = f.read(4)
        for magic, what in NOT_JSONL_MAGIC.items():
            if start.startswith(magic):
                raise DataError(f"{path}: not a JSONL file: it is {what}")
        f.seek(0)
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is allowed
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); JSONL files are "
                                f"UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply to be a row") from None
            except ValueError as e:  # an integer literal beyond Python's 4300-digit limit
                raise DataError(f"{path}:{lineno}: not a usable JSON row ({e})") from None
            yield f"{path}:{lineno}", row


def read_rows(source: str | Path, split: str = "train") -> list[tuple[str, object]]:
    """Every row of a data source with where it came from (``file:line`` or ``source row i``): a JSONL file, a
    JSON / CSV / Parquet file (read by `datasets`), or a dataset folder saved with ``save_to_disk``."""
    source = Path(source)
    if source.is_file() and source.suffix in TABULAR_SUFFIXES:
        import datasets

        try:
            ds = datasets.load_dataset(TABULAR_SUFFIXES[source.suffix], data_files=str(source), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user needs the file and the reason
            raise DataError(f"{source}: not a readable {source.suffix[1:]} file ({type(e).__name__}: {e})") from None
        rows = [(f"{source} row {i + 1}", row) for i, row in enumerate(ds)]
    elif source.is_file():
        rows = list(_jsonl_rows(source))
    elif source.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(source))
        except FileNotFoundError:
            raise DataError(f"{source}: a folder that is not a dataset saved with save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{source}: dataset has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        rows = [(f"{source} row {i}", row) for i, row in enumerate(ds)]
    else:
        raise DataError(f"{source}: no such file or dataset directory")
    if not rows:
        raise DataError(f"{source}: the file holds no records")
    return rows


def read_jsonl(path: str | Path, kind: type) -> list:
    """Read `Demo` or `Pair` records from a JSONL file. Every problem names the file and line."""
    return load_records(path, kind)


def write_jsonl(path: str | Path, records: Iterable) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:  # TRL's column names: a demonstration's response is its "completion"
            row = {"prompt": r.prompt, "completion": r.response} if isinstance(r, Demo) else asdict(r)
            f.write(json.dumps(row) + "\n")
    return path


def load_records(source: str | Path, kind: type, split: str = "train", allow_degenerate: bool = False) -> list:
    """`Demo` or `Pair` records from any `read_rows` source, every row checked as it is read, degenerate rows
    refused unless ``allow_degenerate`` (`check_degenerate`)."""
    rows = read_rows(source, split)
    records = [_record_from_dict(kind, row, where) for where, row in rows]
    check_degenerate(records, [where for where, _ in rows], allow_degenerate)
    return records


def as_records(data, kind: type, allow_degenerate: bool = False) -> list:
    """The Python API's data as records: `Demo`/`Pair` objects as they are (a task's, or `load_records`', which
    checked them), or rows in TRL's formats — a ``datasets.Dataset`` or a list of dicts — checked row by row, their
    degenerate rows refused unless ``allow_degenerate``."""
    rows = list(data)
    records = [r if isinstance(r, kind) else _record_from_dict(kind, r, f"row {i}") for i, r in enumerate(rows)]
    for i, r in enumerate(records):
        for name in RECORD_FIELDS[kind]:
            _check_text(getattr(r, "response" if name == "completion" else name), f"row {i}", name)
    converted = [i for i, r in enumerate(rows) if not isinstance(r, kind)]
    check_degenerate([records[i] for i in converted], [f"row {i}" for i in converted], allow_degenerate)
    return records


def as_prompts(data) -> list[str]:
    """Prompts from strings, or from rows (a ``datasets.Dataset`` or dicts) with a ``prompt`` field."""
    out = []
    for i, row in enumerate(data):
        prompt = row if isinstance(row, str) else row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            raise DataError(f"row {i}: a prompt must be a string or a row with a string field 'prompt'")
        _check_text(prompt, f"row {i}", "prompt")
        out.append(prompt)
    return out


def load_prompts(source: str | Path, split: str = "train") -> list[str]:
    """The prompts of a prompt-only dataset (TRL's format for online methods), or of any rows with a ``prompt``."""
    prompts = []
    for where, row in read_rows(source, split):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataError(f"{where}: a prompt row needs a string field 'prompt'")
        _check_text(row["prompt"], where, "prompt")
        prompts.append(row["prompt"])
    return prompts


# ----------------------------------------------------------------------------------------------
# Tokenisation and batching


@dataclass
class TokenBatch:
    """A right-padded batch: ``input_ids``/``attention_mask``/``response_mask`` are ``[B, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.response_mask)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pad_batch(sequences: Sequence[list[int]], prompt_lengths: Sequence[int], pad_id: int) -> TokenBatch:
    """Right-pad token lists into a `TokenBatch`; response_mask covers tokens after the prompt."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in sequences], dtype=torch.long)
    columns = torch.arange(width)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)[:, None]
    starts = torch.tensor(list(prompt_lengths), dtype=torch.long)[:, None]
    attn = (columns < lengths).long()
    resp = ((columns >= starts) & (columns < lengths)).long()
    return TokenBatch(ids, attn, resp)


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of many texts in one batched tokenizer call (no special tokens); repeated texts once."""
    unique = list(dict.fromkeys(texts))
    ids = dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"])) if unique else {}
    return [ids[t] for t in texts]


def chat_prompt_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model should read them: unchanged, or — when the tokenizer has a chat template — each one
    a user turn followed by the assistant header (``add_generation_prompt``), as text."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts, with the chat template applied when the tokenizer has one (`chat_prompt_texts`).
    The template text carries its own special tokens, so no others are added."""
    return _token_ids(tokenizer, chat_prompt_texts(tokenizer, prompts))


def encode_prompt_responses(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                            max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of each prompt+response+eos, and its number of prompt tokens.

    Prompts and responses are tokenised separately so the boundary is exact, in two batched calls (much less
    per-call overhead than one call per text). Over-long examples are cut from the *end of the response* (the
    prompt is kept whole), never dropped silently: the caller sees the truncated length.
    """
    eos = tokenizer.eos_token_id
    out = []
    for prompt, p, r in zip(prompts, prompt_token_ids(tokenizer, prompts), _token_ids(tokenizer, responses)):
        if len(p) >= max_length:
            raise DataError(f"prompt of {len(p)} tokens does not fit max_length={max_length}: {prompt[:60]!r}")
        out.append(((p + r + [eos])[:max_length], len(p)))
    return out


def model_positions(model) -> int | None:
    """How many positions the model reads (its config's ``max_position_embeddings`` or ``n_positions``)."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_prompts_fit(tokenizer, prompts: Sequence[str], max_new_tokens: int, model) -> None:
    """Before an online run: every prompt plus ``max_new_tokens`` sampled tokens is within the model's positions.
    The error names the first row that does not fit."""
    positions = model_positions(model)
    if positions is None:
        return
    if max_new_tokens >= positions:
        raise DataError(f"config field 'max_new_tokens' ({max_new_tokens}) leaves no room for a prompt within the "
                        f"model's {positions} positions")
    unique = list(dict.fromkeys(prompts))
    lengths = dict(zip(unique, map(len, prompt_token_ids(tokenizer, unique))))
    for row, prompt in enumerate(prompts):
        if lengths[prompt] + max_new_tokens > positions:
            raise DataError(f"prompt {row}: its {lengths[prompt]} tokens plus max_new_tokens={max_new_tokens} "
                            f"is beyond the model's {positions} positions (shorten the prompt or lower "
                            f"max_new_tokens): {prompt[:60]!r}")


def check_fits(tokenizer, prompts: Sequence[str], max_length: int, model=None) -> None:
    """Before training: every prompt leaves room for a response within ``max_length``, and ``max_length`` is within
    the model's positions, so no batch fails mid-run. The error names the first row that does not fit."""
    positions = model_positions(model)
    if positions is not None and max_length > positions:
        raise DataError(f"config field 'max_length' ({max_length}) is beyond the model's {positions} positions")
    unique = list(dict.fromkeys(prompts))
    lengths = dict(zip(unique, map(len, prompt_token_ids(tokenizer, unique))))
    for row, prompt in enumerate(prompts):
        if lengths[prompt] >= max_length:
            raise DataError(f"row {row}: its prompt of {lengths[prompt]} tokens leaves no room for a response within "
                            f"max_length={max_length} (raise max_length or shorten the prompt): {prompt[:60]!r}")


def collate_demos(tokenizer, demos: Sequence[Demo], max_length: int) -> TokenBatch:
    encoded = encode_prompt_responses(tokenizer, [d.prompt for d in demos], [d.response for d in demos], max_length)
    return pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)


def collate_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> TokenBatch:
    """Chosen responses first, then rejected: rows ``[:B]`` are chosen, ``[B:]`` rejected, one forward pass."""
    demos = [Demo(p.prompt, p.chosen) for p in pairs] + [Demo(p.prompt, p.rejected) for p in pairs]
    return collate_demos(tokenizer, demos, max_length)
