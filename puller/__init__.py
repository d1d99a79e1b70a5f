"""pull-verify: an async streaming container-image puller and verifier."""

__version__ = "0.1.0"
