"""Data formats: a record → text segments, each either prompt (not trained) or answer (trained).

``data.format``:

* ``squad``: ``context``, ``question``, ``answers.text[0]`` (a JSON list, JSONL, or SQuAD v1.1's
  own ``{"data": [{"paragraphs": [{"context", "qas"}]}]}`` layout);
* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``jsonl``: ``prompt`` + ``completion``, or chat ``messages`` rendered with the tokenizer's chat
  template, training on the assistant turns only.
"""

from __future__ import annotations

from typing import Callable

from ftcore.errors import UserError
from ftcore.formats import FIELDS, FORMATS  # each format's fields and default prompt (the launcher reads them too)

from .records import Record

Segments = list[tuple[str, bool]]
# data.format → its segmenter: (record, prompt template or None, tokenizer) → (segments, rendered by a
# chat template). Every name of ftcore.formats.FORMATS has one (tests/trainer/test_formats.py).
SEGMENTERS: dict[str, Callable[[Record, str | None, object], tuple[Segments, bool]]] = {}


def segmenter(name: str):
    """Register the decorated function as data.format `name`'s segmenter."""
    def register(fn):
        SEGMENTERS[name] = fn
        return fn
    return register


def _need(record: Record, *keys: str) -> None:
    missing = [k for k in keys if record.fields.get(k) is None]
    if "_not_an_object" in record.fields:
        raise UserError(f"{record.where}: expected a JSON object")
    if missing:
        present = ", ".join(sorted(record.fields)) or "none"
        raise UserError(f"{record.where}: missing {', '.join(repr(k) for k in missing)} (fields present: {present})")


def _fill(template: str, record: Record) -> str:
    try:
        return template.format(**record.fields)
    except KeyError as e:
        raise UserError(f"{record.where}: prompt_template needs field {e.args[0]!r}, which is missing") from None
    except (ValueError, IndexError, AttributeError, TypeError) as e:  # ftcore.schema checked the syntax; a
        # format spec can still not fit the value (`{context:d}` on text)
        raise UserError(f"{record.where}: prompt_template cannot be filled from this record ({e})") from None


def _text(record: Record, *keys: str) -> None:
    """The named fields are text: a number, list or object there is a shape mistake that
    str() would silently turn into training text."""
    for key in keys:
        value = record.fields.get(key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{record.where}: {key!r} should be text, not a {type(value).__name__} ({value!r:.60})")


def prompt_text(record: Record, fmt: str, template: str | None) -> str:
    """The prompt a squad or alpaca record gets before its answer: what training masks, and
    what `ft generate --question/--context` asks a model trained on it."""
    spec = FORMATS[fmt]
    if fmt == "squad":
        _text(record, "context", "question")
        return _fill(template or spec.prompt, record)
    _text(record, "instruction", "input")
    has_input = bool(str(record.fields.get("input") or "").strip())
    default = spec.prompt if has_input else spec.prompt_short
    return _fill(template or default, Record(record.where, {**record.fields, "input": record.fields.get("input") or ""}))


def squad_segments(record: Record, template: str | None) -> Segments:
    _need(record, *FIELDS["squad"][0])
    _text(record, "context", "question")
    answers = record.fields["answers"]
    if isinstance(answers, dict):  # Hugging Face's flattened squad: {"text": [...], "answer_start": [...]}
        texts = answers.get("text")
        if isinstance(texts, str):
            # Indexing a string would train on its first letter.
            raise UserError(f"{record.where}: answers.text should be a list of answers, not one string "
                            f"(write \"text\": [{texts!r:.40}])")
    elif isinstance(answers, list):  # SQuAD v1.1's own layout: [{"text": ..., "answer_start": ...}]
        if not all(isinstance(a, dict) for a in answers):
            raise UserError(f"{record.where}: answers should be a list of {{\"text\": ...}} objects "
                            f"(answers = {answers!r:.80})")
        texts = [a.get("text") for a in answers]
    else:
        raise UserError(f"{record.where}: answers should be {{\"text\": [...]}} or a list of {{\"text\": ...}}, "
                        f"not a {type(answers).__name__} ({answers!r:.60})")
    if not isinstance(texts, list) or not texts:
        raise UserError(f"{record.where}: missing answers.text[0] (answers = {answers!r:.80})")
    if not isinstance(texts[0], str) or not texts[0].strip():
        raise UserError(f"{record.where}: answers.text[0] should be the answer's text (got {texts[0]!r:.60})")
    prompt = prompt_text(record, "squad", template)
    # "Answer:" + " Oslo": the space belongs to the answer's first token, as in running text.
    separator = "" if prompt[-1:].isspace() else " "
    return [(prompt, False), (separator + texts[0].strip(), True)]


def alpaca_segments(record: Record, template: str | None) -> Segments:
    _need(record, *FIELDS["alpaca"][0])
    _text(record, "output")
    return [(prompt_text(record, "alpaca", template), False), (str(record.fields["output"]), True)]


def completion_segments(record: Record, template: str | None) -> Segments:
    _need(record, *FIELDS["jsonl"][0])
    _text(record, "prompt", "completion")
    prompt = _fill(template, record) if template else str(record.fields["prompt"])
    return [(prompt, False), (str(record.fields["completion"]), True)]


def chat_segments(record: Record, tokenizer) -> Segments:
    """Split a rendered conversation into (text, is_assistant) pieces.

    Renders growing prefixes of the conversation: each render must extend the previous one
    (true of ordinary chat templates), so the pieces concatenate to exactly the full render.
    The assistant header (what `add_generation_prompt` adds) is prompt, not answer.
    """
    messages = record.fields["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{record.where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{record.where}: messages[{i}] is missing 'role' or 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{record.where}: no assistant message to train on")
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("data has chat `messages` but the tokenizer has no chat_template")

    def render(upto: int, generation_prompt: bool = False) -> str:
        if upto == 0 and not generation_prompt:
            return ""
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    segments: Segments = []
    done = ""
    for i, message in enumerate(messages):
        steps = [(render(i, True), False)] if message["role"] == "assistant" else []
        steps.append((render(i + 1), message["role"] == "assistant"))
        for text, trained in steps:
            if not text.startswith(done):
                raise UserError(
                    f"{record.where}: the chat template does not render conversations prefix by "
                    "prefix, so assistant turns cannot be located"
                )
            segments.append((text[len(done) :], trained))
            done = text
    return segments


@segmenter("squad")
def _squad(record: Record, template: str | None, tokenizer) -> tuple[Segments, bool]:
    return squad_segments(record, template), False


@segmenter("alpaca")
def _alpaca(record: Record, template: str | None, tokenizer) -> tuple[Segments, bool]:
    return alpaca_segments(record, template), False


@segmenter("jsonl")
def _jsonl(record: Record, template: str | None, tokenizer) -> tuple[Segments, bool]:
    if "messages" in record.fields:
        return chat_segments(record, tokenizer), True
    return completion_segments(record, template), False


def segments(record: Record, fmt: str, template: str | None, tokenizer) -> tuple[Segments, bool]:
    """(segments, rendered by a chat template) for one record of format `fmt`."""
    return SEGMENTERS[fmt](record, template, tokenizer)
