"""Nightly chat-model retraining: one module per stage, in lifecycle order.

ingest -> validate -> train -> evaluate -> promote; run any stage with `python -m pipeline <stage> --help`.
"""
