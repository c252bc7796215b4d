"""Records, file IO and batching.

Three record kinds, read from TRL's dataset formats, standard (strings) or conversational (message lists), so the
same files work in both libraries:
- `Demo`: a demonstration: prompt-completion ``{"prompt", "completion"}`` (``response`` is accepted for
  ``completion``), or language modelling ``{"text"}`` / ``{"messages"}`` (a conversation: every assistant turn is
  trained, nothing else).
- `Pair`: a preference, ``{"prompt", "chosen", "rejected"}``, or implicit-prompt ``{"chosen", "rejected"}``.
- `Unpaired`: an unpaired preference ``{"prompt", "completion", "label"}`` (KTO).
Online methods read prompt-only rows ``{"prompt"}`` (`load_prompts`), their other fields kept for the reward
functions. Files are JSONL, JSON, CSV or Parquet, a dataset folder saved with ``save_to_disk``, or a Hub dataset
id already in the local Hugging Face cache. Every row is checked when it is read; an error names file, line or
row, and field.

Conversational fields are read as `Chat` and made text by the method's tokenizer (`render`): its chat template, as
TRL's ``apply_chat_template`` splits prompt and completion, or — for a ``messages`` row — rendered turn by turn
(`chat_turns`) so the loss covers exactly the assistant turns. The result is `Text` flagged ``templated``, so the
one tokenisation path below does not apply a template twice.

Token layout used everywhere in preftune: ``input_ids = prompt_ids + response_ids + [eos]``, with a
``response_mask`` that is 1 exactly on the trained tokens (the response and the eos; for a multi-turn conversation
every assistant turn), 0 on the prompt and padding. Loss functions score ``labels = input_ids[:, 1:]`` with
``logits[:, :-1]``, so the prompt is masked out of every loss by construction.

Plain prompts (tasks, standard files) stay plain text. When the tokenizer has a chat template (an
instruction-tuned model such as SmolLM2), `prompt_token_ids` — the one place prompts become tokens, for training
batches and for sampling alike — wraps each plain prompt as a user turn followed by the assistant header, so the
model sees the conversation format it was tuned on and the response is the assistant's reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """A data file or dataset is malformed; the message names the file and line."""


class Text(str):
    """A string from a dataset row, with what preftune must remember about it.

    ``templated``: the chat template already produced it (a conversational row), so `chat_prompt_texts` leaves it as
    it is and a response gets no extra eos (the template's end of turn ends it). ``messages``: the conversation a
    templated prompt renders, which reward functions receive as TRL passes it. ``columns``: the row's other fields,
    passed to reward functions as keywords (TRL's ``**kwargs``)."""

    templated: bool
    messages: list | None
    columns: dict

    def __new__(cls, text: str, templated: bool = False, messages: list | None = None, columns: dict | None = None):
        self = super().__new__(cls, text)
        self.templated, self.messages, self.columns = templated, messages, dict(columns or {})
        return self


class Chat(tuple):
    """A conversational field as read, ``((role, content), ...)``, before the chat template makes it text (the
    tokenizer is not known when rows are read); ``where`` names its row for errors found when rendering, ``columns``
    are the row's other fields (prompt-only rows)."""

    where: str
    columns: dict

    def __new__(cls, messages: Iterable = (), where: str = "", columns: dict | None = None):
        self = super().__new__(cls, messages)
        self.where, self.columns = where, dict(columns or {})
        return self

    def dicts(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self]


@dataclass(frozen=True)
class Demo:
    """A demonstration: the response is trained, the prompt is not. ``turns`` continues a multi-turn conversation
    after the response, as ``(text, trained)`` segments (a ``messages`` row: every later assistant turn is trained,
    the user and system turns between them are not).

    The fields of every record kind are text, or `Chat` for a conversational row until `render` applies the chat
    template (a ``messages`` row reads as ``Demo(Chat(), messages)``)."""

    prompt: str
    response: str
    turns: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Unpaired:
    """An unpaired preference (TRL's ``{"prompt", "completion", "label"}``, KTO's data): ``label`` is True when the
    completion is desirable."""

    prompt: str
    completion: str
    label: bool


RECORD_FIELDS = {Demo: ("prompt", "completion"), Pair: ("prompt", "chosen", "rejected"),
                 Unpaired: ("prompt", "completion", "label")}
TABULAR_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet"}  # read by `datasets`
ROLES = ("system", "user", "assistant", "tool")
# Conversations need a chat template; a tokenizer without one (the tiny models') renders them with this one. Its
# {% generation %} markers let HF's ``return_assistant_tokens_mask`` (and TRL's ``assistant_only_loss``) find the
# assistant turns too; an assistant turn ends with the tokenizer's eos, so sampling stops there. No newlines: the
# tiny tokenizer has printable ASCII only.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- '<|' + message['role'] + '|>' + message['content'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


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


def implicit_chat_prompt(chosen: Chat, rejected: Chat) -> tuple[Chat, Chat, Chat]:
    """The conversational form of `implicit_prompt`: the messages both conversations share are the prompt (TRL's
    ``extract_prompt``)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return Chat(chosen[:n], chosen.where), Chat(chosen[n:], chosen.where), Chat(rejected[n:], rejected.where)


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


def _has_content(field: str | Chat) -> bool:
    return bool(field) if isinstance(field, Chat) else bool(field.strip())


def check_degenerate(records: Sequence, wheres: Sequence[str], allow: bool = False) -> int:
    """Count the rows that teach nothing — a demonstration whose prompt and completion are both empty, a pair
    whose chosen and rejected responses are the same — and refuse them unless ``allow`` (``allow_degenerate``),
    naming the first ones. Returns how many there were."""
    bad = [(where, "empty prompt and completion" if isinstance(r, Demo) else "chosen == rejected")
           for r, where in zip(records, wheres)
           if (isinstance(r, Demo) and not _has_content(r.prompt) and not _has_content(r.response))
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


def _messages(value: object, where: str, name: str) -> Chat:
    """A conversational field checked: a non-empty list of ``{"role", "content"}`` messages with string values and a
    role TRL knows."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a string or a non-empty list of messages "
                        f"{{'role': ..., 'content': ...}}")
    for j, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: field '{name}' message {j} must be an object with string 'role' and "
                            f"'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: field '{name}' message {j} has role {message['role']!r}; roles are "
                            f"{list(ROLES)}")
    for m in value:
        _check_text(m["content"], where, name)
    return Chat(((m["role"], m["content"]) for m in value), where)


def _field(row: dict, name: str, where: str) -> str | Chat:
    """A standard (string) or conversational (message list) field."""
    value = row[name]
    if isinstance(value, str):
        _check_text(value, where, name)
        return value
    return _messages(value, where, name)


def _same_form(where: str, **values) -> None:
    if len({isinstance(v, Chat) for v in values.values()}) > 1:
        raise DataError(f"{where}: fields {list(values)} must all be strings or all be message lists")


def _label(row: dict, where: str) -> bool:
    label = row["label"]
    if isinstance(label, bool) or (isinstance(label, int) and label in (0, 1)):
        return bool(label)
    raise DataError(f"{where}: field 'label' must be true or false (is the completion desirable?), got {label!r}")


def _record_from_dict(kind: type, row: object, where: str):
    """One row in TRL's formats, standard (strings) or conversational (message lists): language modelling (``text``
    or ``messages``) or prompt-completion (``response`` accepted for ``completion``) for `Demo`; preference with an
    explicit or implicit prompt for `Pair`; unpaired preference for `Unpaired`. Conversational fields stay `Chat`
    until `render` applies the tokenizer's chat template."""
    fields = RECORD_FIELDS[kind]
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields {list(fields)}, got {type(row).__name__}")
    if kind is Demo:
        if "messages" in row and "prompt" not in row:
            chat = _messages(row["messages"], where, "messages")
            if not any(role == "assistant" for role, _ in chat):
                raise DataError(f"{where}: field 'messages' has no assistant turn to train on")
            return Demo(Chat(), chat)
        if "text" in row and "prompt" not in row:
            _strings(row, ("text",), where)
            return Demo(Text("", templated=True), row["text"])  # language modelling: every token is trained
    if kind in (Demo, Unpaired):
        completion = "completion" if "completion" in row or kind is Unpaired else "response"
        names = ("prompt", completion) + (("label",) if kind is Unpaired else ())
        missing = [f for f in names if f not in row]
        if missing:
            what = "a demonstration" if kind is Demo else "an unpaired preference"
            also = " (or 'response' for 'completion'; or 'text' or 'messages' alone)" if kind is Demo else ""
            raise DataError(f"{where}: missing field(s) {missing}; {what} needs {list(fields)}{also}")
        prompt, response = _field(row, "prompt", where), _field(row, completion, where)
        _same_form(where, prompt=prompt, **{completion: response})
        if kind is Demo:
            return Demo(prompt, response)
        return Unpaired(prompt, response, _label(row, where))
    missing = [f for f in ("chosen", "rejected") if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; a preference pair needs {list(fields)} (or chosen and "
                        f"rejected alone, which share their prompt)")
    chosen, rejected = _field(row, "chosen", where), _field(row, "rejected", where)
    _same_form(where, chosen=chosen, rejected=rejected)
    # TRL's maybe_extract_prompt: a prompt of the other form than chosen/rejected is ignored, the prompt is implicit
    prompt = _field(row, "prompt", where) if "prompt" in row else None
    if prompt is None or isinstance(prompt, Chat) != isinstance(chosen, Chat):
        if isinstance(chosen, Chat):
            return Pair(*implicit_chat_prompt(chosen, rejected))
        return Pair(*implicit_prompt(chosen, rejected))
    return Pair(prompt, chosen, rejected)


# ----------------------------------------------------------------------------------------------
# Conversations through the chat template


def _apply_template(tokenizer, messages: list[dict], where: str, **kwargs) -> str:
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - a template raises what its author wrote; the user needs the row
        raise DataError(f"{where}: the chat template cannot render this conversation ({type(e).__name__}: "
                        f"{e})") from None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def chat_prompt_text(tokenizer, prompt: Chat) -> str:
    """A conversational prompt as text, TRL's way: the assistant header follows a user/system/tool turn
    (``add_generation_prompt``); a final assistant turn is continued (``continue_final_message``)."""
    if prompt[-1][0] == "assistant":
        return _apply_template(tokenizer, prompt.dicts(), prompt.where, continue_final_message=True)
    return _apply_template(tokenizer, prompt.dicts(), prompt.where, add_generation_prompt=True)


def chat_prompt_completions(tokenizer, prompt: Chat, *completions: Chat) -> list[Text]:
    """A conversational prompt and completions as texts, as TRL's ``apply_chat_template`` splits them: the prompt is
    the part its rendering shares with every prompt+completion rendering, each completion the rest (so a template
    that renders the generation prompt differently inside a conversation still splits at the same place)."""
    if not prompt:
        raise DataError(f"{prompt.where}: chosen and rejected share no message, so there is no prompt")
    prompt_text = chat_prompt_text(tokenizer, prompt)
    fulls = [_apply_template(tokenizer, prompt.dicts() + c.dicts(), c.where or prompt.where) for c in completions]
    n = min(_common_prefix(prompt_text, full) for full in fulls)
    return [Text(prompt_text[:n], templated=True, messages=prompt.dicts())] + \
        [Text(full[n:], templated=True) for full in fulls]


def chat_turns(tokenizer, messages: Chat) -> list[tuple[str, bool]]:
    """A conversation (a ``messages`` row) as ``(text, trained)`` segments whose concatenation is its rendering, the
    assistant turns trained, everything else not (TRL's ``assistant_only_loss``).

    Rendered incrementally, so any template works (no ``{% generation %}`` markers needed): assistant turn i spans
    from the end of the conversation before it, rendered with the generation prompt, to the end of the conversation
    up to it. A template that renders earlier turns differently once later ones follow (one that drops the
    reasoning of past turns) cannot be split this way and is refused."""
    where, dicts = messages.where, messages.dicts()
    if dicts[0]["role"] == "assistant":
        raise DataError(f"{where}: field 'messages' starts with an assistant turn; a conversation starts with a "
                        f"system or user turn")
    full = _apply_template(tokenizer, dicts, where)
    segments, end = [], 0
    for i, message in enumerate(dicts):
        if message["role"] != "assistant":
            continue
        before = _apply_template(tokenizer, dicts[:i], where, add_generation_prompt=True)
        upto = _apply_template(tokenizer, dicts[:i + 1], where)
        start = _common_prefix(before, upto)
        if not full.startswith(upto) or start < end:
            raise DataError(f"{where}: the chat template renders turn {i} differently once later turns follow, so "
                            f"its assistant turns cannot be told apart; give prompt/completion rows instead")
        segments += [(full[end:start], False), (full[start:len(upto)], True)]
        end = len(upto)
    return segments


def render(record, tokenizer):
    """A record whose conversational fields (`Chat`) are made text by the tokenizer's chat template (its own, or
    `DEFAULT_CHAT_TEMPLATE` when it has none); a standard record as it is."""
    if isinstance(record, Demo) and isinstance(record.response, Chat):
        if not record.prompt:  # a messages row
            (prompt, _), (response, _), *turns = chat_turns(tokenizer, record.response)
            return Demo(Text(prompt, templated=True, messages=[]), Text(response, templated=True), tuple(turns))
        return Demo(*chat_prompt_completions(tokenizer, record.prompt, record.response))
    if isinstance(record, Pair) and isinstance(record.chosen, Chat):
        return Pair(*chat_prompt_completions(tokenizer, record.prompt, record.chosen, record.rejected))
    if isinstance(record, Unpaired) and isinstance(record.completion, Chat):
        return Unpaired(*chat_prompt_completions(tokenizer, record.prompt, record.completion), record.label)
    return record


# ----------------------------------------------------------------------------------------------
# Reading


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


def _cached_hub_dataset(source: str, split: str):
    """A Hugging Face Hub dataset id, read from the local cache only (nothing is downloaded)."""
    import datasets

    if source.count("/") > 1 or not source.strip("/") or source.startswith((".", "/", "~")) \
            or Path(source).suffix in {".jsonl", *TABULAR_SUFFIXES}:  # a path, not an id
        raise DataError(f"{source}: no such file or dataset folder")
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True  # the cached copy or nothing, never a download
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user needs the source and the reason
        raise DataError(f"{source}: no such file or dataset folder, and not a dataset in the local Hugging Face "
                        f"cache ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = offline


def read_rows(source: str | Path, split: str = "train") -> list[tuple[str, object]]:
    """Every row of a data source with where it came from (``file:line`` or ``source row i``): a JSONL file, a
    JSON / CSV / Parquet file (read by `datasets`), a dataset folder saved with ``save_to_disk``, or the id of a
    Hub dataset already in the local Hugging Face cache."""
    name, source = str(source), Path(source)
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
        rows = [(f"{name} row {i}", row) for i, row in enumerate(_cached_hub_dataset(name, split))]
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
    """`Demo`, `Pair` or `Unpaired` records from any `read_rows` source, every row checked as it is read, degenerate
    rows refused unless ``allow_degenerate`` (`check_degenerate`). Conversational fields stay `Chat` until a method
    renders them with its tokenizer (`as_records`)."""
    rows = read_rows(source, split)
    records = [_record_from_dict(kind, row, where) for where, row in rows]
    check_degenerate(records, [where for where, _ in rows], allow_degenerate)
    return records


def as_records(data, kind: type, tokenizer=None, allow_degenerate: bool = False) -> list:
    """The Python API's data as records: `Demo`/`Pair`/`Unpaired` objects as they are (a task's, or
    `load_records`', which checked them), or rows in TRL's formats — a ``datasets.Dataset`` or a list of dicts —
    checked row by row, their degenerate rows refused unless ``allow_degenerate``. With ``tokenizer``,
    conversational records are rendered by its chat template (`render`)."""
    rows = list(data)
    records = [r if isinstance(r, kind) else _record_from_dict(kind, r, f"row {i}") for i, r in enumerate(rows)]
    converted = [i for i, r in enumerate(rows) if not isinstance(r, kind)]
    check_degenerate([records[i] for i in converted], [f"row {i}" for i in converted], allow_degenerate)
    return records if tokenizer is None else [render(r, tokenizer) for r in records]


def _prompt_from_row(row: object, where: str) -> Text | Chat:
    """A prompt-only row: ``prompt`` a string or a message list; every other field but ``completion`` is kept as a
    column for the reward functions (TRL passes them as keywords)."""
    if isinstance(row, Text | Chat):
        return row
    if isinstance(row, str):
        _check_text(row, where, "prompt")
        return Text(row)
    if not isinstance(row, dict) or "prompt" not in row:
        raise DataError(f"{where}: a prompt row needs a string field 'prompt' (or a list of messages)")
    columns = {k: v for k, v in row.items() if k not in ("prompt", "completion", "response")}
    prompt = _field(row, "prompt", where)
    if isinstance(prompt, Chat):
        return Chat(prompt, where, columns)
    return Text(prompt, columns=columns)


def as_prompts(data, tokenizer=None) -> list[Text | Chat]:
    """Prompts from strings, or from rows (a ``datasets.Dataset`` or dicts) with a ``prompt`` field (standard or
    conversational), each row's other fields kept as `Text.columns`. With ``tokenizer``, a conversational prompt
    becomes its chat-template text (`chat_prompt_text`), which keeps its messages and columns."""
    prompts = [_prompt_from_row(row, f"row {i}") for i, row in enumerate(data)]
    if tokenizer is None:
        return prompts
    return [Text(chat_prompt_text(tokenizer, p), templated=True, messages=p.dicts(), columns=p.columns)
            if isinstance(p, Chat) else p for p in prompts]


def load_prompts(source: str | Path, split: str = "train") -> list[Text | Chat]:
    """The prompts of a prompt-only dataset (TRL's format for online methods), or of any rows with a ``prompt``,
    with their other fields as columns (`as_prompts`)."""
    return [_prompt_from_row(row, where) for where, row in read_rows(source, split)]


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


def pad_batch(sequences: Sequence[list[int]], prompt_lengths: Sequence[int] | None, pad_id: int,
              trained: Sequence[list[int]] | None = None) -> TokenBatch:
    """Right-pad token lists into a `TokenBatch`; response_mask covers the tokens after the prompt, or — given
    ``trained`` (0/1 per token, a multi-turn conversation's assistant turns) — exactly those."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in sequences], dtype=torch.long)
    if trained is None:
        trained = [[0] * n + [1] * (len(s) - n) for s, n in zip(sequences, prompt_lengths)]
    resp = torch.tensor([list(m) + [0] * (width - len(m)) for m in trained], dtype=torch.long)
    attn = (torch.arange(width) < torch.tensor([len(s) for s in sequences])[:, None]).long()
    return TokenBatch(ids, attn, resp)


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of many texts in one batched tokenizer call (no special tokens); repeated texts once."""
    unique = list(dict.fromkeys(texts))
    ids = dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"])) if unique else {}
    return [ids[t] for t in texts]


def chat_prompt_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model should read them: unchanged, or — when the tokenizer has a chat template — each plain
    prompt a user turn followed by the assistant header (``add_generation_prompt``), as text. A prompt the chat
    template already produced (a conversational row, `Text.templated`) is left as it is."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    return [p if getattr(p, "templated", False) else
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts, with the chat template applied when the tokenizer has one (`chat_prompt_texts`).
    The template text carries its own special tokens, so no others are added."""
    return _token_ids(tokenizer, chat_prompt_texts(tokenizer, prompts))


def encode_demos(tokenizer, demos: Sequence[Demo], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids of each demonstration, prompt + response (+ its later turns) + eos, and which tokens are trained
    (0/1): the response and eos, and a multi-turn conversation's later trained turns; never the prompt.

    Every part is tokenised separately so the boundaries are exact, in two batched calls (much less per-call
    overhead than one call per text). A response the chat template produced gets no eos: its template's end of turn
    ends it. Over-long examples are cut from the *end* (the prompt is kept whole), never dropped silently: the
    caller sees the truncated length.
    """
    eos = tokenizer.eos_token_id
    parts = [[(d.response, True), *d.turns] for d in demos]
    part_ids = iter(_token_ids(tokenizer, [text for segments in parts for text, _ in segments]))
    out = []
    for demo, p, segments in zip(demos, prompt_token_ids(tokenizer, [d.prompt for d in demos]), parts):
        if len(p) >= max_length:
            raise DataError(f"prompt of {len(p)} tokens does not fit max_length={max_length}: {demo.prompt[:60]!r}")
        ids, trained = list(p), [0] * len(p)
        for _, is_trained in segments:
            tokens = next(part_ids)
            ids += tokens
            trained += [int(is_trained)] * len(tokens)
        if not getattr(demo.response, "templated", False):
            ids.append(eos)
            trained.append(1)
        out.append((ids[:max_length], trained[:max_length]))
    return out


def encode_prompt_responses(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                            max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of each prompt+response+eos, and its number of prompt tokens (`encode_demos`)."""
    encoded = encode_demos(tokenizer, [Demo(p, r) for p, r in zip(prompts, responses)], max_length)
    return [(ids, trained.index(1) if 1 in trained else len(ids)) for ids, trained in encoded]


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
    encoded = encode_demos(tokenizer, demos, max_length)
    return pad_batch([e[0] for e in encoded], None, tokenizer.pad_token_id, trained=[e[1] for e in encoded])


def collate_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> TokenBatch:
    """Chosen responses first, then rejected: rows ``[:B]`` are chosen, ``[B:]`` rejected, one forward pass."""
    demos = [Demo(p.prompt, p.chosen) for p in pairs] + [Demo(p.prompt, p.rejected) for p in pairs]
    return collate_demos(tokenizer, demos, max_length)
