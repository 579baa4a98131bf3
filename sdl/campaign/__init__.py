"""A campaign: its config (:mod:`.config`), the closed loop (:mod:`.loop`), station scheduling
(:mod:`.scheduler`) and the Ray launcher that places its agents (:mod:`.launcher`)."""

from sdl.campaign.config import CampaignConfig, InstrumentConfig, load_config, parse_config

_LOOP = ("Campaign", "CampaignError", "CampaignSummary")


def __getattr__(name: str):
    # The loop, and Ray with it, is imported when a campaign is run, not when a config is read.
    if name in _LOOP:
        from sdl.campaign import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'sdl.campaign' has no attribute {name!r}")


__all__ = ["CampaignConfig", "InstrumentConfig", "load_config", "parse_config", *_LOOP]
