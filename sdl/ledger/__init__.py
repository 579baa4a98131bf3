"""The ledger: a campaign's single source of truth (:mod:`.store`), its typed documents
(:mod:`.documents`) and exports (:mod:`.export`)."""

from sdl.ledger.documents import Document, parse_document
from sdl.ledger.store import (
    BACKUP_FILENAME,
    LEDGER_FILENAME,
    STATUSES,
    ExperimentRecord,
    Ledger,
    LedgerError,
    PlannedExperiment,
    Status,
    finished_experiments,
)

__all__ = ["BACKUP_FILENAME", "LEDGER_FILENAME", "STATUSES", "Document", "ExperimentRecord", "Ledger", "LedgerError",
           "PlannedExperiment", "Status", "finished_experiments", "parse_document"]
