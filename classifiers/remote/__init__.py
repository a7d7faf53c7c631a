"""Remote vision APIs as hard-label classifiers (adapters land in the next commit)."""
