"""``python -m cortex.neuron`` is the ``neuron`` command."""

from __future__ import annotations

from cortex.neuron.cli import main

main()
