"""Limiter control plane: the rate controller, the Redis key schema and Lua scripts."""
