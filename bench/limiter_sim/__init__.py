"""The shared limiter against a simulated upstream whose hidden limit changes on a schedule.

Starts a private Redis (or uses ``--redis-url``), the simulator with a hidden limit that
steps through ``--limits`` (default 40, 20, 60 req/s, one phase each), one limiter and N
proxy replicas, and offers a load well above the limit (default twice the highest limit)
spread over the replicas. Prints, per phase, goodput as a share of the hidden limit and
the upstream 429 ratio in steady state, the upstream 429s that reached clients (and how
many of them still had retries left), the 429s the proxies made themselves (held back),
and the time to settle after each change, each against the issue's targets; draws
docs/img/limiter-sim.png. Runs with 1 and with 4 replicas by default, one after the other.

    .venv/bin/pip install matplotlib                      # for the plot
    .venv/bin/python -m bench.limiter_sim                 # full run: 2 x 4 min + start-up
    .venv/bin/python -m bench.limiter_sim --quick         # 30-s phases
    .venv/bin/python -m bench.limiter_sim --replicas 4 --json out.json
    .venv/bin/python -m bench.limiter_sim --env RATE_LIMIT_PROBE_INTERVAL=5  # experiments
    .venv/bin/python -m bench.limiter_sim --replot out.json --plot other.png
    .venv/bin/python -m bench.limiter_sim.alignment       # drop settle vs window alignment

Each run starts from a cold pool (its own Redis key prefix) and holds the first limit for
a warm-up (one phase by default) before the measured phases.

Run from the repository root (``bench`` is a namespace package). docs/limiter.md explains
the algorithm and discusses the results.
"""
