"""What several services share: metric exposition and names, outcome classes, task and log
helpers, defaults. It imports no service (tests/test_imports.py)."""
