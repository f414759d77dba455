"""Batch runs over many scans: a deterministic share of the cases per process (shards), skipping
cases already finished (resume), a summary per part and a check that a whole batch is complete.

Imports only `inference.io` and `inference.core`; nothing here loads torch, so the
completeness check runs anywhere the outputs are readable.
"""
