"""The pure lifecycle core: no I/O, no asyncio, no clock or randomness of its own.

Time (`now_ms`) and randomness (`rng`) are parameters, so every rule here is testable in
microseconds and the edges (HTTP, AMQP) share one set of rules.
"""
