"""quickstart: the ServerApp."""

from flsplit import make_server_app
from quickstart.task import TASK

app = make_server_app(TASK)
