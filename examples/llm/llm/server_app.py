"""llm: the ServerApp."""

from flsplit import make_server_app
from llm.task import TASK

app = make_server_app(TASK)
