"""zai-proxy: an LLM gateway that counts every token and learns the upstream's rate limit."""

__version__ = "0.1.0"
