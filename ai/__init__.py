"""The AI relay (contract §3): dedicated servers call the model through the gateway.

    request.py     the Messages API request: parsed, checked, rebuilt; server tools and betas by allowlist
    admission.py   per-user slots (ALLY_AI_CONCURRENCY) and cap reservations, across processes
    sse.py         splitting a server-sent-event byte stream into whole events, bytes untouched
    provider.py    the seam a model provider plugs into (`Provider`, `Reply`)
    anthropic_provider.py   Anthropic through the official SDK
    openai_provider.py      OpenAI Chat Completions through the official SDK, as a fallback
    gemini_provider.py      Google AI (Gemini API) through the official SDK, as a fallback
    foreign.py     what the fallbacks share: translated replies, errors in Anthropic's shape
    translate/     Anthropic Messages <-> OpenAI / Gemini, requests, answers and streams
    chain.py       retries with backoff, then the fallback chain, up to the first byte
    metering.py    tokens per user, provider, model and month in Redis
    relay.py       the HTTP routes and the streaming passthrough; `setup(app) -> Plugin`

Provider keys stay here, usage is metered per user, and nothing of a prompt or an
answer is written anywhere: bodies live in memory for one request only.
"""
