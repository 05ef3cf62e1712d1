"""``python -m cortex`` is the ``cortex`` command."""

from __future__ import annotations

from cortex.cli import main

# The guard keeps the module import-safe: vLLM's engine core is a spawned process that
# imports the parent's main module.
if __name__ == "__main__":
    main()
