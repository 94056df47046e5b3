"""ft's core: what the launcher (login node) and the trainer (inside the container) both need.

The job schema, the one error type, exit codes, the job folder's names (`layout`) and
records (`records`: the launcher⇄trainer contract), the rendezvous rule, the memory/precision
policy, the data-format and dtype registries and the image contract. Imports nothing but the
standard library, pydantic and PyYAML: never torch, never the launcher, never the trainer.

    launcher ──▶ ftcore ◀── trainer ◀── fttools        (docs/architecture.md)
"""
