"""A module whose attribute is not callable."""

asgi = 42
