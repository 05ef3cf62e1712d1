"""Sentence embeddings on the neuron (``POST /v1/embeddings``).

``spec`` tells an embedding model from a generative one and reads how it pools;
``pooling`` is the hot path as tensor functions; ``harness`` batches the forward passes on
the device's worker thread; ``service`` turns a request into vectors and the OpenAI reply.
"""
