"""A campaign: its config (:mod:`.config`), the closed loop (:mod:`.loop`), station scheduling
(:mod:`.scheduler`) and the Ray launcher that places its agents (:mod:`.launcher`)."""

from sdl.campaign.config import CampaignConfig, InstrumentConfig, load_config, parse_config
from sdl.campaign.loop import Campaign, CampaignError, CampaignSummary

__all__ = ["Campaign", "CampaignConfig", "CampaignError", "CampaignSummary", "InstrumentConfig", "load_config",
           "parse_config"]
