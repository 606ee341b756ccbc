"""Simulated LLM upstream (OpenAI and Anthropic dialects) for tests, benchmarks and the demo."""
