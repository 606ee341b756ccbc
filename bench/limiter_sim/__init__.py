"""The shared limiter against simulated upstreams whose hidden limits change, on the real
services: a private Redis (or ``--redis-url``), the simulator, one ``zai-proxy limiter``
and 1, 3 or 10 ``zai-proxy proxy`` replicas, with an open-loop client offering twice the
highest capacity spread over the replicas.

Scenarios (``bench/limiter_sim/scenarios.py``): token buckets with 0, 1 and 5 s of burst,
fixed 1-s and 10-s windows, a sliding window, 1% random 429s (rate limits of 30, 15 and
45 req/s), and concurrency limits of 8, 4 and 12 at 0.2, 1 (also streamed) and 3 s per
answer. Each run holds the first limit for a warm-up, then the same limit, its half and
three times that; it prints, per phase, goodput against the capacity and the upstream 429
ratio in steady state (the last half), upstream 429s that reached clients with retries
left, held-back requests, and the time to settle after each change, against the issue's
targets, and draws docs/img/limiter-sim.png.

    .venv/bin/pip install matplotlib                       # for the plot
    .venv/bin/python -m bench.limiter_sim                  # bucket-1s with 1, 3, 10 replicas
    .venv/bin/python -m bench.limiter_sim --all --replicas 3 --json out.json
    .venv/bin/python -m bench.limiter_sim --scenario fixed-10s --replicas 1
    .venv/bin/python -m bench.limiter_sim --env RATE_LIMIT_PROBE_BUDGET=0.02  # experiments
    .venv/bin/python -m bench.limiter_sim --replot out.json --plot other.png

Each run starts from a cold pool (its own Redis key prefix). Run from the repository root
(``bench`` is a namespace package). docs/limiter.md explains the law and the results; the
discrete-event model (bench/limiter_model) runs the same families in seconds.
"""
