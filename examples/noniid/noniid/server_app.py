"""noniid: the ServerApp."""

from flsplit import make_server_app
from noniid.task import TASK

app = make_server_app(TASK)
