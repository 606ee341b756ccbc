"""Dashboard API: REST history, SSE live stream and the built web UI."""
