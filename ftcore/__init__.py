"""ft's core: what the launcher (login node) and the trainer (inside the container) both need.

The job schema, the one error type, exit codes, the job-folder and checkpoint layout, the
rendezvous rule, the memory/precision policy and the image contract. Imports nothing but the
standard library, pydantic and PyYAML: never torch, never the launcher, never the trainer.

    launcher ──▶ ftcore ◀── trainer ◀── fttools
"""
