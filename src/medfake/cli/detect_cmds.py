"""CLI commands (placeholder: filled in by its owner)."""


def register(app, data_app, train_app) -> None:
    pass
