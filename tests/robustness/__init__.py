"""Robustness suite: the sweep over real and built models, property-based tests on generated
graphs, and the bad-input corpus (see tests/robustness/conftest.py for how to run each)."""
