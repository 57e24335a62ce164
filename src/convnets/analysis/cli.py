"""Placeholder: the analysis helper replaces this file (adds `summary` and `cost`)."""


def add_parsers(subparsers) -> None:
    pass
