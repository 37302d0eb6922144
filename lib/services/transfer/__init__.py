"""File transfers over the encrypted links (PROTOCOL.md §10); the whole story is in manager.py.

One job per module:
  manager.py   `Transfers`: the API facade (send, accept, pause, ...), the link observer, the
               record dispatcher, control retransmissions
  sender.py    offers, answers, the reader greenlet (disk -> cache), ACKs and losses, END
  receiver.py  offers from the peer, DATA into the writer greenlet, FILE_ACKs, sync, finishing
  pump.py      the pump greenlet: paces DATA bursts out on every link (congestion, windows)
  pmtu.py      the path MTU search of a link's channel
  model.py     sizes and timers, states, errors, Transfer/Outgoing/Incoming, Channel
  disk.py      blocking file work, run in gevent's thread pool
"""

from .disk import part_path_for
from .manager import Transfers
from .model import Incoming, InvalidTransferRequest, Outgoing, Transfer, TransferError, TransferNotFound

__all__ = ["Incoming", "InvalidTransferRequest", "Outgoing", "Transfer", "TransferError", "TransferNotFound",
           "Transfers", "part_path_for"]
