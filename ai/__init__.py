"""The AI relay (contract §3): dedicated servers call the model through the gateway.

    request.py     the Messages API request: validated enough to refuse garbage with a 400
    sse.py         splitting a server-sent-event byte stream into whole events, bytes untouched
    provider.py    the seam a model provider plugs into (`Provider`, `Reply`)
    anthropic_provider.py   Anthropic through the official SDK
    chain.py       retries with backoff, then the fallback chain, up to the first byte
    metering.py    tokens per user, model and month in Redis; the monthly cap
    relay.py       the HTTP routes and the streaming passthrough; `setup(app)`

Provider keys stay here, usage is metered per user, and nothing of a prompt or an
answer is written anywhere: bodies live in memory for one request only.
"""
