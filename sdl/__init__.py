"""sdl: an agent-based self-driving laboratory controller for materials inverse design."""

__version__ = "0.1.0"
