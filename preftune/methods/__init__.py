"""One module per method: its config dataclass and its training function on the shared trainer."""
