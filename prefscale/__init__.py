"""prefscale: predict which of two chatbot answers a person prefers, at cluster scale."""

__version__ = "0.1.0"
