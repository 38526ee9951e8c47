"""Placeholder until the command line lands."""


def main() -> None:
    raise SystemExit("effnet: the command line is not built yet")
