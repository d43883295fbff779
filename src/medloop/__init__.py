"""medloop: keep a Qwen3 medical assistant current."""

__version__ = "0.1.0"
