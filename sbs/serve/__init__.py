"""Serving exported students over HTTP with Ray Serve: see docs/serving.md."""
