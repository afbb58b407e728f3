"""llm: the ClientApp (clients and helpers)."""

from flsplit import make_client_app
from llm.task import TASK

app = make_client_app(TASK)
