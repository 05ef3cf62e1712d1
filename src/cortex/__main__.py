"""``python -m cortex`` is the ``cortex`` command."""

from __future__ import annotations

from cortex.cli import main

main()
