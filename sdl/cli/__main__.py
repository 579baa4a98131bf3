"""``python -m sdl.cli``: the same as the ``sdl`` command."""

from sdl.cli import main

main()
