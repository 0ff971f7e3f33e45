"""introspect: find the hidden attributes an image network pays attention to, at scale."""

__version__ = "0.1.0"
