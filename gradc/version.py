"""gradc's version: a leaf module, so every stage can name it without importing the package."""

__version__ = "0.1.0"
