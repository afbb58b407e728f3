"""multihop: the ServerApp, planning every round's helper chains."""

from flsplit import make_server_app
from multihop.task import TASK

app = make_server_app(TASK)
