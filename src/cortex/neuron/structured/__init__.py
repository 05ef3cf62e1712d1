"""Structured outputs: what a request constrains (``rules``), as one grammar for the whole
reply, and the per-sequence matchers that hold generation to it (``matcher``)."""
