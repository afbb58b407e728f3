"""multihop: the ClientApp (clients and helpers)."""

from flsplit import make_client_app
from multihop.task import TASK

app = make_client_app(TASK)
