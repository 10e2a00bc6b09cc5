"""rifml: immune-profile calls for recurrent implantation failure (research use only)."""

__version__ = "0.1.0"
