"""Anthropic Messages <-> the fallback providers' APIs (docs/ai-relay.md has the table).

anthropic_in.py    reading a Messages request: what both fallbacks share and refuse
anthropic_out.py   Anthropic messages and stream events, built from another provider's answer
openai_chat.py     <-> OpenAI Chat Completions
gemini.py          <-> the Gemini API (google-genai SDK shapes)
"""
