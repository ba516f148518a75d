"""Shared test settings: one hypothesis profile for the whole suite.

"ci" (the default) derandomizes hypothesis so every run of the suite checks the same
examples: a red CI run reproduces locally. ``HYPOTHESIS_PROFILE=explore`` draws fresh
random examples instead (use it to hunt for new counterexamples).
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "explore", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
