"""heterogeneous: the ServerApp, planning every round."""

from flsplit import make_server_app
from heterogeneous.task import TASK

app = make_server_app(TASK)
