"""Fixtures of the preference-study tests (defined in study_helpers.py)."""
from study_helpers import image_sets, server_factory, study_dir, study_template  # noqa: F401
