"""The neuron's generation engine (see ``base`` for the contract)."""
