"""The server role: the ServerApp factory, round planning, checkpoints and history."""
