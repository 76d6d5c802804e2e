"""Credentials in memory: a value that never prints itself, and the key a process that sends
nothing holds instead of one (issue 19)."""

from __future__ import annotations


class Secret:
    """A credential that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class WithheldKey(Secret):
    """The API key of a channel in a process that sends nothing (no `sender` role, issue 19):
    never read from its variable, file or the registry, so the process cannot leak it, and
    never revealed: a use would be a wiring mistake, and fails loudly."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("")

    def reveal(self) -> str:
        raise RuntimeError("this process runs without API keys (it has no sender role)")


WITHHELD_KEY = WithheldKey()
