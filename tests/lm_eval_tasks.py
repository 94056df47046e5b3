"""lm-eval task files of the tests' own: a multiple-choice task and a generation task, their
data in local files beside them (lm-eval's `json` builder), nothing from a hub."""

from __future__ import annotations

import json
from pathlib import Path

MC = [{"question": "How old is Ada?", "choices": ["36", "12", "Oslo"], "label": 0},
      {"question": "Where does Ada live?", "choices": ["Paris", "Oslo", "Rome"], "label": 1},
      {"question": "What colour is the sky?", "choices": ["green", "red", "blue"], "label": 2},
      {"question": "Which one is a number?", "choices": ["seven", "table", "run"], "label": 0}]
GEN = [{"context": "Ada lives in Oslo. Ada is 36.", "question": "How old is Ada?", "answer": "36"},
       {"context": "Bo lives in Rome. Bo is 7.", "question": "Where does Bo live?", "answer": "Rome"},
       {"context": "The cat is black.", "question": "What colour is the cat?", "answer": "black"}]


def write_tasks(folder: Path) -> tuple[Path, Path]:
    """Two lm-eval task files of ours, their data beside them (lm-eval's `json` builder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mc.jsonl", MC), ("gen.jsonl", GEN)):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    mc = folder / "ft_tiny_mc.yaml"
    mc.write_text(f"""task: ft_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    gen = folder / "ft_tiny_gen.yaml"
    gen.write_text(f"""task: ft_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "Context: {{{{context}}}}\\nQuestion: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return mc, gen
