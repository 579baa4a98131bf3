"""What a person looks at after (or during) a campaign: ``sdl status`` and ``sdl report``
(:mod:`.campaign`), with the alloy pages of the simulated lab (:mod:`.alloy`)."""

from sdl.report.campaign import summarize, write_report

__all__ = ["summarize", "write_report"]
