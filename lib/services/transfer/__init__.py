"""File transfers over the encrypted links (see manager.py for the whole story)."""

from .manager import Transfers
from .model import Incoming, InvalidTransferRequest, Outgoing, Transfer, TransferError, TransferNotFound
from .disk import part_path_for


__all__ = ["Incoming", "InvalidTransferRequest", "Outgoing", "Transfer", "TransferError", "TransferNotFound",
           "Transfers", "part_path_for"]
