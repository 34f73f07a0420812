"""The parser every command line of the switch and its receivers is built with: an option
given twice in one command is refused, where argparse would keep the last without a word.

`serve --data /srv/wh ... --data /srv/test` (a unit's options and an operator's addition)
would otherwise serve the second data dir; `admin credit ... --id a --id b` would retry
under an id the operator did not mean. Options that are meant to repeat say so with their
own action (`append`, `count`) and are left alone, as are flags (a flag twice is the flag).
"""

import argparse
import weakref

from switch import limits


class _StoreOnce(argparse.Action):
    """argparse's `store`, refusing the option a second time in the same command line."""

    def __init__(self, option_strings, dest, **kwargs):
        if kwargs.get("nargs") == 0:
            raise ValueError("nargs=0: a flag takes store_true or store_const")
        super().__init__(option_strings, dest, **kwargs)
        # The namespace this action last stored into: a parse makes its own (each
        # subcommand's too), so a second store into the same one is the option repeated.
        self._stored_into = None

    def __call__(self, parser, namespace, values, option_string=None):
        if (option_string is not None and self._stored_into is not None
                and self._stored_into() is namespace):
            raise argparse.ArgumentError(
                self, f"given twice (the second time {_shown(values)}); give it once")
        self._stored_into = weakref.ref(namespace)
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
