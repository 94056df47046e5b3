"""Data formats: a record → text segments, each either prompt (not trained) or answer (trained).

``data.format``:

* ``squad``: ``context``, ``question``, ``answers.text[0]`` (a JSON list, JSONL, or SQuAD v1.1's
  own ``{"data": [{"paragraphs": [{"context", "qas"}]}]}`` layout);
* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``jsonl``: ``prompt`` + ``completion``, or chat ``messages`` rendered with the tokenizer's chat
  template, training on the assistant turns only;
* ``preference``: ``prompt``, ``chosen``, ``rejected`` (TRL's preference layout): strings, or message
  lists rendered with the chat template (the prompt may be implicit: the turns that ``chosen`` and
  ``rejected`` begin with alike). Its segmenter returns two conversations, the prompt followed by
  each answer, and only the answers are trained on.
"""

from __future__ import annotations

from typing import Callable

from ftcore.errors import UserError
from ftcore.formats import FIELDS, FORMATS  # each format's fields and default prompt (the launcher reads them too)

from .records import Record

Segments = list[tuple[str, bool]]
# data.format → its segmenter: (record, prompt template or None, tokenizer) → (segments, rendered by a
# chat template); for a preference format (`Format.pairs`) the segments are a (chosen, rejected)
# pair. Every name of ftcore.formats.FORMATS has one (tests/trainer/test_formats.py).
SEGMENTERS: dict[str, Callable[[Record, str | None, object], tuple[Segments | tuple[Segments, Segments], bool]]] = {}


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
    _messages(record, messages, "messages")
    return conversation_segments(record, messages, tokenizer)


def _messages(record: Record, messages, key: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{record.where}: {key!r} must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{record.where}: {key}[{i}] is missing 'role' or 'content'")


def conversation_segments(record: Record, messages: list, tokenizer, trained_from: int = 0) -> Segments:
    """`messages` rendered with the chat template, its assistant turns from index `trained_from`
    on trained (see `chat_segments`)."""
    if not any(m["role"] == "assistant" for m in messages[trained_from:]):
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
        trained = message["role"] == "assistant" and i >= trained_from
        steps = [(render(i, True), False)] if trained else []
        steps.append((render(i + 1), trained))
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


@segmenter("preference")
def _preference(record: Record, template: str | None, tokenizer) -> tuple[tuple[Segments, Segments], bool]:
    return preference_segments(record, template, tokenizer)


def preference_segments(record: Record, template: str | None, tokenizer) -> tuple[tuple[Segments, Segments], bool]:
    """(chosen, rejected) conversations of a preference record, and whether a chat template rendered
    them. Strings: the prompt (data.prompt_template fills it from the record when given) followed by
    each answer. Message lists: the prompt's turns followed by each answer's, rendered whole; with
    no `prompt`, the turns both answers begin with alike are the prompt (TRL's `extract_prompt`)."""
    _need(record, "chosen", "rejected")
    chosen, rejected, prompt = (record.fields.get(k) for k in ("chosen", "rejected", "prompt"))
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            raise UserError(f"{record.where}: 'chosen' and 'rejected' are text, so the record needs its 'prompt' "
                            "(only message lists can leave the prompt implicit)")
        _text(record, "prompt")
        prompt_text = _fill(template, record) if template else prompt
        return ([(prompt_text, False), (chosen, True)], [(prompt_text, False), (rejected, True)]), False
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise UserError(f"{record.where}: 'chosen' and 'rejected' should both be text or both message lists, "
                        f"not a {type(chosen).__name__} and a {type(rejected).__name__}")
    _messages(record, chosen, "chosen")
    _messages(record, rejected, "rejected")
    if prompt is None:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise UserError(f"{record.where}: no 'prompt', and 'chosen' and 'rejected' begin with different "
                            "messages: give the prompt's messages, or start both with them")
    elif isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    else:
        _messages(record, prompt, "prompt")
    pair = tuple(conversation_segments(record, [*prompt, *answer], tokenizer, trained_from=len(prompt))
                 for answer in (chosen, rejected))
    return pair, True


def segments(record: Record, fmt: str, template: str | None, tokenizer) -> tuple[Segments, bool]:
    """(segments, rendered by a chat template) for one record of format `fmt`; a (chosen, rejected)
    pair of segments for a preference format."""
    return SEGMENTERS[fmt](record, template, tokenizer)
