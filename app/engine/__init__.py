"""The engine process: the one part of ``app`` that imports torch and runs the model.

``core`` (the process's loop: sockets, requests, results), ``scheduler`` (continuous batching), ``rows`` (the
batch's rows as arrays), ``jobs`` (what a request becomes), ``generation`` (one sequence's tokens, stops and
logprobs), ``stops``, ``prefix_cache``, ``state_tokens`` and ``cpus`` (cores and BLAS threads per step). The HTTP
side (the rest of ``app``) talks to it over a socket in :mod:`app.protocol`'s frames and never imports it.
"""
