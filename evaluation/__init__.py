"""Scoring and measuring: DSC/NSD with the FLARE organisers' rules (`python -m evaluation`) and a
per-case resource harness (`python -m evaluation.harness`). May import `inference`; never imported
by it."""
