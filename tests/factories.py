"""Test-time model folders: see training/model_folders.py."""
from training.model_folders import architecture, make_model_folder, plans  # noqa: F401
