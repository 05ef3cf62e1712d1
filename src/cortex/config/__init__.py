"""Config files and flags → validated models.

Each file has its module: ``neuron`` (``neuron.toml``, merged with flags and NEURON_
variables), ``gateway`` (``cortex.toml`` with its keys, and ``models.toml``), and
``values`` (sizes such as "64MiB", durations such as "2s", listen addresses, tokens, and
the reading of a file). Any mistake is a ``ConfigError`` that names the file, the key
and the reason. Everything public is importable from ``cortex.config``.
"""

from cortex.config.gateway import (
    CortexConfig,
    EvictionSection,
    GatewaySection,
    KeyEntry,
    KeysFile,
    ModelProfile,
    ModelsConfig,
    NeuronEntry,
    PlacementSection,
    load_gateway_config,
    read_keys_file,
)
from cortex.config.neuron import NeuronConfig, load_neuron_config
from cortex.config.values import (
    Duration,
    Size,
    check_token,
    parse_duration,
    parse_listen,
    parse_size,
)

__all__ = [
    "CortexConfig",
    "Duration",
    "EvictionSection",
    "GatewaySection",
    "KeyEntry",
    "KeysFile",
    "ModelProfile",
    "ModelsConfig",
    "NeuronConfig",
    "NeuronEntry",
    "PlacementSection",
    "Size",
    "check_token",
    "load_gateway_config",
    "load_neuron_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "read_keys_file",
]
