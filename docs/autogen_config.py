#!/usr/bin/env python
"""Write the option reference (``options.md``) from the traits of jkpmanager's configurable classes.

Run by ``conf.py`` on every build, as jupyter_server's ``docs/autogen_config.py`` is, so the page
lists exactly the options the code has: each with its type, default, help and ``JKP_*`` variable.
``python docs/autogen_config.py`` prints it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from traitlets import TraitType
from traitlets.config import Configurable

from jkp.app import JKPManagerApp
from jkp.traits import env_name

PAGE = "options.md"

HEADER = """\
% Written by docs/autogen_config.py from the traits on every build: do not edit by hand.

# Every option

Every option of `jkpmanager`, by class, as the code declares it. Set one in a config file
(`c.PoolManager.max_pending_kernels = 5`), on the command line
(`--PoolManager.max_pending_kernels=5`) or, when it names one, with its `JKP_*` environment
variable. Precedence: **command line > config file > environment > built-in default**. A value
that does not parse stops start-up with a message naming the option and the variable.
`jkpmanager --help-all` prints the same list. How they fit together:
[Configuration](configuration.md).
"""

# Markdown punctuation that help texts may hold and must show as it is ('*', <t>, KERNEL_*).
# Longer defaults (a list of 15 names) are shown with their option only, keeping the table narrow.
_TABLE_DEFAULT_WIDTH = 40

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|{}#~$])")


def documented_classes() -> list[type[Configurable]]:
    """The app and every configurable class it wires, as ``--help-all`` lists them."""
    return [JKPManagerApp, *JKPManagerApp.classes]


def _escape(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _code(value: str) -> str:
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def _default(cls: type[Configurable], name: str, trait: TraitType) -> str:
    # The built-in default: an env-backed trait's static one, whatever JKP_* the shell has set.
    if name in getattr(cls, "_trait_default_generators", {}):
        return repr(cls().trait_defaults(name))  # a @default method (the app's log settings)
    return trait.default_value_repr()


def _help(trait: TraitType) -> str:
    text = inspect.cleandoc(trait.help or "")
    env = env_name(trait)
    if env:
        text = text.removesuffix(f"({env} env var)").rstrip()
    return " ".join(text.split()) or "(no help text)"


def _aliases() -> list[str]:
    lines = ["## Command-line aliases", "", "| alias | option |", "|---|---|"]
    for alias, target in sorted(JKPManagerApp.aliases.items(), key=lambda kv: str(kv[0])):
        names = alias if isinstance(alias, tuple) else (alias,)
        shown = ", ".join(_code(("-" if len(n) == 1 else "--") + n) for n in names)
        cls_name, _, name = (target[0] if isinstance(target, tuple) else target).rpartition(".")
        if cls_name in {c.__name__ for c in JKPManagerApp.__mro__}:
            cls_name = JKPManagerApp.__name__  # Application.log_level is the app's log_level
        lines.append(f"| {shown} | {{confval}}`{cls_name}.{name}` |")
    return lines


def _class_section(cls: type[Configurable]) -> list[str]:
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    lines = [f"## {cls.__name__}", "", " ".join(doc.split()), ""]
    for name, trait in sorted(cls.class_traits(config=True).items()):
        env = env_name(trait)
        lines += [
            f"```{{confval}} {cls.__name__}.{name}",
            f":type: {type(trait).__name__}",
            f":default: {_code(_default(cls, name, trait))}",
            "",
            _escape(_help(trait)),
        ]
        if env:
            lines += ["", f"Environment variable: {_code(env)}"]
        if cls is JKPManagerApp and name not in cls.class_own_traits(config=True):
            lines += ["", "(Inherited from Jupyter's application.)"]
        lines += ["```", ""]
    return lines


def _env_table(classes: list[type[Configurable]]) -> list[str]:
    lines = [
        "## Environment variables",
        "",
        "| variable | option | default |",
        "|---|---|---|",
    ]
    rows = []
    for cls in classes:
        for name, trait in cls.class_traits(config=True).items():
            env = env_name(trait)
            if env:
                option = f"{{confval}}`{cls.__name__}.{name}`"
                default = _default(cls, name, trait)
                long = len(default) > _TABLE_DEFAULT_WIDTH
                shown = "(see the option)" if long else _code(default)
                rows.append((env, option, shown))
    lines += [f"| {_code(env)} | {option} | {default} |" for env, option, default in sorted(rows)]
    return lines


def render() -> str:
    """The page, as MyST Markdown."""
    classes = documented_classes()
    lines = [HEADER, *_env_table(classes), "", *_aliases(), ""]
    for cls in classes:
        lines += _class_section(cls)
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path) -> None:
    """Write the page, leaving the file untouched when it did not change (no needless rebuild)."""
    text = render()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":
    print(render(), end="")
