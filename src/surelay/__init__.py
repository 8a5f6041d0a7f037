"""surelay: an embeddable, OTP-style supervised actor runtime that delivers messages reliably.

The supervision layer lives in `surelay.supervision`; the delivery runtime's public names
are re-exported here as they land.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
