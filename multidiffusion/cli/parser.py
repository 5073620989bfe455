"""The command line's parser: one ``error: ...`` line and exit status 2 for any usage error, flags
checked by name, and verbs loaded only when chosen.

This module imports nothing heavy: ``multidiffusion --help`` lists the verbs without importing
torch or diffusers; a verb's module (its flags, description and run) is imported when the verb is
on the command line (:meth:`Parser.parse_known_args`), or for every verb when the whole parser is
asked for.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["EXIT_USAGE", "Parser", "fail", "fill_verb"]

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error: ...`` line, exit status 2, and refuses a
    flag it does not know by its name before it parses (plain argparse would first let the flag's
    value become the prompt: ``--stepz 5 "a lake"`` made the prompt "5")."""

    def error(self, message: str) -> NoReturn:
        fail(re.sub(r"'([^']{40})[^']{21,}'", lambda m: f"'{m[1]}...' ({len(m[0]) - 2:,} characters)", message))

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = sys.argv[1:] if args is None else list(args)
        verbs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if not verbs:  # a verb's parser
            self._check_flags(args)
        else:  # the top level (whose only flag is --help): the verb is the first other word
            chosen = next((a for a in args if not a.startswith("-")), None)
            before = args[: args.index(chosen)] if chosen is not None else args
            wrong = [a for a in before if a.split("=", 1)[0] not in self._option_string_actions]
            if wrong:
                self.error(f"unknown flag {wrong[0]}: flags go after the command (`{self.prog} COMMAND --help`)")
            if chosen in verbs[0].choices:
                fill_verb(verbs[0].choices[chosen], chosen)
        return super().parse_known_args(args, namespace)

    def _check_flags(self, args: list[str]) -> None:
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        for arg in args:
            if arg == "--":  # what follows is positional
                return
            if not arg.startswith("--"):
                continue
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions or (self.allow_abbrev and any(f.startswith(name) for f in flags)):
                continue  # known, or a prefix that argparse resolves (or calls ambiguous)
            close = difflib.get_close_matches(name, flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (see `{self.prog} --help`)"
            self.error(f"unknown flag {name}{hint}")


def fill_verb(p: argparse.ArgumentParser, verb: str) -> None:
    """Give ``p`` the flags, description and run of ``verb`` (module ``multidiffusion.cli.<verb>``)."""
    if p.get_default("run") is not None:
        return
    module = importlib.import_module(f"multidiffusion.cli.{verb}")
    p.description = module.HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    module.register(p)
