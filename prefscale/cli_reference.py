"""docs/cli.md, generated from the command line's own parsers: every command, its usage and options.

The argparse parsers in prefscale/cli.py are the one place the commands are defined; this renders
them (a test fails when docs/cli.md differs from the rendering), so the user guide's reference
never drifts from `prefscale COMMAND --help`.
"""

from __future__ import annotations

import argparse

REGENERATE = "prefscale config cli-reference > docs/cli.md"


def _commands(parser: argparse.ArgumentParser, prefix: str = "prefscale") -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(full command, its parser, its one-line help), depth first, in the order the CLI lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                found += nested or [(f"{prefix} {name}", sub, helps.get(name) or "")]
    return found


def _escape(text: str) -> str:
    """Help text as Markdown table text: no raw HTML (<input name>), no column breaks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def _option(action: argparse.Action) -> tuple[str, str]:
    names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{action.dest}`"
    if action.nargs not in (0, None) or (action.option_strings and not isinstance(action, argparse._StoreTrueAction)):
        if action.choices:
            names += " " + "\\|".join(str(c) for c in action.choices)
        elif action.option_strings:
            names += f" {action.metavar or action.dest.upper()}" + (" ..." if action.nargs in ("+", "*") else "")
    text = _escape(action.help or "")
    if action.required and action.option_strings:
        text = f"**required**. {text}"
    if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
        text += f" (default: `{action.default}`)"
    return names, text


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """The reference of ``parser`` (prefscale.cli.build_parser()), as Markdown."""
    lines = ["# Command reference", "", f"Generated from the command line's parsers (`{REGENERATE}`); `prefscale COMMAND --help` prints the same.",
             "Every command but `completion` and the `config` printers takes `--json`: its summary as one JSON object on the last line of stdout.",
             ""]
    for name, command, help_text in _commands(parser):
        help_text = _escape(help_text)
        lines += [f"## `{name}`", "", help_text[:1].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."), ""]
        rows = [_option(a) for a in command._actions if not isinstance(a, argparse._HelpAction) and a.dest != "json"]
        if rows:
            lines += ["| argument | meaning |", "|---|---|", *(f"| {n} | {t} |" for n, t in rows), ""]
    return "\n".join(lines).rstrip() + "\n"
