"""Placeholder: the data helper replaces this file (adds `augment`)."""


def add_parsers(subparsers) -> None:
    pass
