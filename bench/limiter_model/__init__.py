"""A fast discrete-event model of the limiter's fleet, for the control law's scenarios.

    .venv/bin/python -m bench.limiter_model                  # every scenario, one seed
    .venv/bin/python -m bench.limiter_model --seeds 5 --family rate
    .venv/bin/python -m bench.limiter_model --only 'fixed-10s x3' --trace

The model runs the real control law (services/limiter/controller.py) against simulated
upstreams on a virtual clock: hundreds of scenario runs take seconds, where the real
services (bench/limiter_sim) take minutes per run. docs/limiter.md shows both.
"""
