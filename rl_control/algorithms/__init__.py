"""One module per algorithm; each is a small class with ``update(...) -> dict[str, float]``."""
