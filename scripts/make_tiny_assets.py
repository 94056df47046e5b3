"""Regenerate the tiny assets ft ships for tests and smoke runs.

    python scripts/make_tiny_assets.py          # rewrites factories/data/tiny_qa.jsonl and tiny_tokenizer/

Writes, deterministically and offline:

* ``factories/data/tiny_qa.jsonl``: 200 SQuAD-style records about made-up people, small and
  repetitive enough that a two-layer model learns to answer them in a few hundred steps.
* ``factories/data/tiny_qa_val.jsonl``: 40 more records drawn the same way with another seed:
  the `tiny` factory's held-out set, so its validation loss and `ft eval`'s exact match
  measure answers the model has not seen.
* ``factories/data/tiny_tokenizer/``: a byte-level BPE tokenizer (vocabulary 384) trained on
  that text, saved as a ``PreTrainedTokenizerFast`` folder with ``<s>``/``</s>``/``<pad>`` and a
  small chat template. A vocabulary this small keeps the tiny model's embedding and output
  head cheap on CPU; byte-level means any text still tokenizes.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "factories" / "data"
VOCAB_SIZE = 384
NUM_RECORDS = 200
NUM_VAL_RECORDS = 40

NAMES = [
    "Ada", "Ben", "Cleo", "Dov", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun",
    "Kai", "Lea", "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tove",
]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "pink", "gray"]
THINGS = ["kite", "boat", "cat", "hat", "bike", "lamp", "drum", "cup"]
PLACES = ["Oslo", "Lima", "Rome", "Kyiv", "Cairo", "Quito", "Paris", "Seoul", "Perth", "Tunis"]

SPECIAL = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# bos, then one `<|role|>` header per turn; each turn ends with eos. Rendering messages[:i]
# is always a prefix of rendering messages[:i+1], which the trainer relies on to find
# the assistant turns.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def qa_records(seed: int = 0, count: int = NUM_RECORDS, prefix: str = "tiny") -> list[dict]:
    """Two facts per context, one question about one of them; the answer is a span."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        name = NAMES[i % len(NAMES)]
        color, thing, place = rng.choice(COLORS), rng.choice(THINGS), rng.choice(PLACES)
        age = rng.randint(3, 90)
        facts = [f"{name} has a {color} {thing}.", f"{name} lives in {place}.", f"{name} is {age}."]
        questions = [
            (f"What color is the {thing} of {name}?", color),
            (f"Where does {name} live?", place),
            (f"How old is {name}?", str(age)),
        ]
        asked = rng.randrange(3)
        shown = sorted({asked, rng.randrange(3)})
        context = " ".join(facts[k] for k in shown)
        question, answer = questions[asked]
        records.append(
            {
                "id": f"{prefix}-{i:03d}",
                "title": name,
                "context": context,
                "question": question,
                "answers": {"text": [answer], "answer_start": [context.index(answer)]},
            }
        )
    return records


def held_out(train: list[dict]) -> list[dict]:
    """NUM_VAL_RECORDS records drawn with another seed, none identical to a training record."""
    seen = {(r["context"], r["question"]) for r in train}
    fresh = [r for r in qa_records(1, 2 * NUM_VAL_RECORDS, "tiny-val") if (r["context"], r["question"]) not in seen]
    return fresh[:NUM_VAL_RECORDS]


def train_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    # `tokenizer(text)` adds bos, like Llama's; the trainer reads this convention off the
    # tokenizer rather than assuming it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    records = qa_records()
    for name, rows in (("tiny_qa.jsonl", records), ("tiny_qa_val.jsonl", held_out(records))):
        with open(DATA / name, "w") as f:
            for record in rows:
                f.write(json.dumps(record) + "\n")

    corpus = [f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer: {r['answers']['text'][0]}" for r in records]
    corpus += ["### Instruction:\n### Input:\n### Response:\n", "You are a helpful assistant."]
    tokenizer = train_tokenizer(corpus)
    out = DATA / "tiny_tokenizer"
    shutil.rmtree(out, ignore_errors=True)
    tokenizer.save_pretrained(out)
    # transformers 5 writes a v5-only class name and a separate chat_template.jinja; older
    # releases (the container may bring 4.x) read only tokenizer_config.json. One portable file:
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "additional_special_tokens": SPECIAL[3:],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {DATA / 'tiny_qa.jsonl'} ({len(records)} records) and {out} (vocab {len(tokenizer)})")


if __name__ == "__main__":
    main()
