"""The documentation says what the code does: every option is in the reference the docs build
generates, and the hand-written pages name only options and variables that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from jkp.app import JKPManagerApp
from jkp.traits import env_name

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _autogen_config():
    spec = importlib.util.spec_from_file_location("autogen_config", DOCS / "autogen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configurable_classes():
    return [JKPManagerApp, *JKPManagerApp.classes]


def _hand_written_pages() -> list[Path]:
    generated = DOCS / _autogen_config().PAGE
    pages = [p for p in sorted(DOCS.glob("*.md")) if p != generated]
    return [ROOT / "README.md", *pages, ROOT / "jkp_config.py"]


def _variables_in_code() -> set[str]:
    # Every env="JKP_..." a trait declares, wherever in jkp/ it is: a class the app forgot to list
    # would still be found here.
    found = set()
    for path in (ROOT / "jkp").rglob("*.py"):
        found.update(re.findall(r"""env=["'](JKP_[A-Z0-9_]+)["']""", path.read_text()))
    return found


def test_option_reference_documents_every_option_and_variable():
    page = _autogen_config().render()
    for cls in _configurable_classes():
        assert f"\n## {cls.__name__}\n" in page, cls.__name__
        for name, trait in cls.class_traits(config=True).items():
            assert f"```{{confval}} {cls.__name__}.{name}\n" in page, f"{cls.__name__}.{name}"
            env = env_name(trait)
            assert env is None or f"Environment variable: `{env}`" in page, env
    for env in _variables_in_code():
        assert f"| `{env}` | {{confval}}`" in page, env


def _local_stack_variables() -> set[str]:
    # The local stack's own settings (dev/localstack.py), which the getting-started page names.
    return set(re.findall(r"JKP_STACK_[A-Z0-9_]+", (ROOT / "dev" / "localstack.py").read_text()))


@pytest.mark.parametrize("page", _hand_written_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_name_only_variables_that_exist(page):
    known = {env_name(t) for c in _configurable_classes() for t in c.class_traits().values()}
    known |= _local_stack_variables()
    named = set(re.findall(r"JKP_[A-Z0-9_]*[A-Z0-9]", page.read_text()))
    assert named - known == set()


@pytest.mark.parametrize("page", _hand_written_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_name_only_options_that_exist(page):
    classes = {c.__name__: c for c in _configurable_classes()}
    # `PoolManager.x` or c.PoolManager.x; not --GatewayClient.x, which may be Jupyter Server's.
    pattern = r"(?:`|\bc\.)(" + "|".join(classes) + r")\.([A-Za-z_]+)\b"
    for cls_name, name in re.findall(pattern, page.read_text()):
        assert name in classes[cls_name].class_traits(config=True), f"{cls_name}.{name}"


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert "docs/index.md" in local
    for target in local:
        assert (ROOT / target).exists(), target
