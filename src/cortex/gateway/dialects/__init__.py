"""The gateway's API surfaces, one module each: how a client's request is read, how the
neuron's answer reaches the client, and the error envelope.

``openai`` relays the OpenAI dialects (chat completions, Responses) event by event;
``anthropic`` translates Messages to and from the chat dialect the neurons speak, with
``anthropic_request`` (requests), ``anthropic_reply`` (whole replies) and
``anthropic_stream`` (streams). ``relay`` is what they share: the neuron's stream as typed
events, usage and time-to-first-token.
"""
