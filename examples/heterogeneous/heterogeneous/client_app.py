"""heterogeneous: the ClientApp (clients and helpers)."""

from flsplit import make_client_app
from heterogeneous.task import TASK

app = make_client_app(TASK)
