"""xpert_pl: expert knowledge transfer (XPERT) from a pre-trained Mixture-of-Experts LLM to dense students."""

__version__ = "0.1.0"
