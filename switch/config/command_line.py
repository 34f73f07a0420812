"""The parser every command line of the switch and its receivers is built with: an option
given twice in one command is refused, where argparse would keep the last without a word.

`serve --data /srv/wh ... --data /srv/test` (a unit's options and an operator's addition)
would otherwise serve the second data dir; `admin credit ... --id a --id b` would retry
under an id the operator did not mean, and so would `admin --id a credit ... --id b`, where
the option is given once to `admin` and once to its subcommand. Options that are meant to
repeat say so with their own action (`append`, `count`) and are left alone, as are flags (a
flag twice is the flag). What counts is where an option stores its value: two options that
store into one place are one option given twice.
"""

import argparse
import threading
import weakref

from switch import limits

# The options stored so far in the command line being parsed, by destination: one parse
# of the outermost parser, its subcommands' parsers included (each parses into a namespace
# of its own, which argparse then copies over the outer one's, so a namespace cannot say it).
_parsing = threading.local()


class _StoreOnce(argparse.Action):
    """argparse's `store`, refusing the option a second time in the same command line."""

    def __init__(self, option_strings, dest, **kwargs):
        if kwargs.get("nargs") == 0:
            raise ValueError("nargs=0: a flag takes store_true or store_const")
        super().__init__(option_strings, dest, **kwargs)
        # Outside a CommandLineParser's own parse (this action inherited by a plain parser
        # through `parents=`): the namespace it last stored into, a parse making its own.
        self._stored_into = None

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:
            stored = getattr(_parsing, "stored", None)
            if stored is not None:
                repeated = self.dest in stored
                stored.add(self.dest)
            else:
                repeated = (self._stored_into is not None
                            and self._stored_into() is namespace)
                self._stored_into = weakref.ref(namespace)
            if repeated:
                raise argparse.ArgumentError(
                    self, f"given twice (the second time {_shown(values)}); give it once")
        setattr(namespace, self.dest, values)


def _shown(values) -> str:
    text = repr(values)
    most = limits.command_line_value_shown_chars_max
    return text if len(text) <= most else text[:most - 3] + "..."


class CommandLineParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose plain options (and its subcommands') take one value
    once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        outermost = getattr(_parsing, "stored", None) is None
        if outermost:
            _parsing.stored = set()
        try:
            return super().parse_known_args(args, namespace)
        finally:
            if outermost:
                _parsing.stored = None
