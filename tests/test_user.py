"""userId validation and the set-up code that binds a kernel: directory and environment."""

import ast
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jkp.user import (
    USER_ID_PATTERN,
    InvalidUserId,
    set_up_code,
    validate_user_id,
)

SAFE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-"


@pytest.mark.parametrize("user_id", ["zt", "a@b.c", "user-1_x", "..a", "a" * 128, "0"])
def test_valid_user_ids_are_accepted(user_id):
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    [
        "",
        ".",
        "..",
        "a/b",
        "../etc",
        "a\nb",
        "zt\n",
        "a b",
        "a;b",
        "$(id)",
        "`id`",
        "%cd /",
        "a" * 129,
        "é",
        "a\x00",
        None,
        5,
        ["zt"],
        {"a": 1},
    ],
)
def test_invalid_user_ids_are_refused(user_id):
    with pytest.raises(InvalidUserId):
        validate_user_id(user_id)


@given(st.text(max_size=200))
def test_nothing_outside_the_pattern_is_accepted(user_id):
    try:
        validate_user_id(user_id)
    except InvalidUserId:
        return
    assert 1 <= len(user_id) <= 128
    assert set(user_id) <= set(SAFE_CHARS)
    assert user_id not in (".", "..")


def enter_user_dir_code(working_dir, user_id):
    """The pop's set-up for ``user_id``, as one cell (the comm's handler runs the same
    function on the same arguments)."""
    return set_up_code(working_dir, validate_user_id(user_id), child_only=True)


def _shape_and_arguments(code):
    """The code's syntax tree with the set-up call's arguments blanked, and those arguments."""
    tree = ast.parse(code)
    calls = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", "") == "__jkp_set_up"
    ]
    assert len(calls) == 1
    arguments = [ast.literal_eval(arg) for arg in calls[0].args]
    calls[0].args = []
    return ast.dump(tree), arguments


@given(
    st.from_regex(USER_ID_PATTERN, fullmatch=True).filter(lambda u: u not in (".", "..")),
    st.text(min_size=1).map(lambda s: "/" + s),
)
def test_user_id_reaches_the_kernel_only_as_a_literal(user_id, working_dir):
    shape, arguments = _shape_and_arguments(enter_user_dir_code(working_dir, user_id))
    reference_shape, _ = _shape_and_arguments(enter_user_dir_code("/w", "u"))
    assert arguments == [working_dir, user_id, True, {}]
    assert shape == reference_shape


# What a client may send as env: any text, quotes, backslashes, newlines, non-ASCII, long.
env_texts = st.one_of(
    st.text(max_size=64),
    st.sampled_from(["'", '"', "\\", "\n", "'''", '"""', "\\'", "é€𝄞", "${x}", "$(id)", "\x00"]),
    st.text(min_size=4096, max_size=4096, alphabet=st.characters(codec="utf-8")),
)


@given(
    st.dictionaries(env_texts, env_texts, max_size=4),
    st.one_of(st.none(), st.text(max_size=200)),
    st.text(min_size=1, max_size=100).map(lambda s: "/" + s),
)
def test_env_and_directory_reach_the_kernel_only_as_literals(env, target, working_dir):
    """Whatever a gateway create sends, the set-up code is the same program with other
    constant arguments: nothing a client sends becomes code."""
    shape, arguments = _shape_and_arguments(set_up_code(working_dir, target, env=env))
    reference_shape, _ = _shape_and_arguments(set_up_code("/w", None))
    assert arguments == [working_dir, target, False, env]
    assert shape == reference_shape


def test_set_up_code_sets_env_values_exactly(tmp_path):
    env = {
        "KERNEL_QUOTES": "'\"'''\"\"\"",
        "KERNEL_BACKSLASH": "\\n\\",
        "KERNEL_NEWLINE": "a\nb",
        "KERNEL_UNICODE": "é€𝄞",
        "KERNEL_LONG": "x" * 4096,
        "KERNEL_CODE": "__import__('os').system('touch pwned')",
    }
    code = set_up_code(str(tmp_path), None, env=env)
    result = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, os; print(json.dumps(dict(os.environ)))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert {name: seen[name] for name in env} == env
    assert not (tmp_path / "pwned").exists()


def run_in_python(code, cwd):
    """Run set-up code as a kernel would, then print the working directory."""
    return subprocess.run(
        [sys.executable, "-c", code + "\nimport os; print(os.getcwd())"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_set_up_code_makes_and_enters_the_user_dir(tmp_path):
    result = run_in_python(enter_user_dir_code(str(tmp_path), "zt"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "zt")
    assert (tmp_path / "zt").is_dir()


def test_set_up_code_refuses_a_symlink_leading_out_of_working_dir(tmp_path):
    share, outside = tmp_path / "share", tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    os.symlink(outside, share / "zt")
    result = run_in_python(enter_user_dir_code(str(share), "zt"), cwd=tmp_path)
    assert result.returncode != 0
    assert "UserDirectoryRefused" in result.stderr


def test_gateway_set_up_enters_a_nested_directory_inside_working_dir(tmp_path):
    result = run_in_python(set_up_code(str(tmp_path), str(tmp_path / "alice" / "p")), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "alice" / "p")


def test_gateway_set_up_may_enter_working_dir_itself(tmp_path):
    result = run_in_python(set_up_code(str(tmp_path), str(tmp_path)), cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path)


@pytest.mark.parametrize("target", ["/", "..", "/etc", "../share-other"])
def test_gateway_set_up_refuses_directories_not_inside_working_dir(tmp_path, target):
    share = tmp_path / "share"
    share.mkdir()
    result = run_in_python(set_up_code(str(share), target), cwd=tmp_path)
    assert result.returncode != 0
    assert "UserDirectoryRefused" in result.stderr


@pytest.mark.parametrize("name", ["x" * 300, "a-file/below"])
def test_gateway_set_up_refuses_a_directory_it_cannot_make(tmp_path, name):
    """A path the client chose that cannot be made is the client's, not the share's fault."""
    (tmp_path / "a-file").write_text("")
    result = run_in_python(set_up_code(str(tmp_path), name), cwd=tmp_path)
    assert "UserDirectoryRefused" in result.stderr


def test_set_up_refuses_a_user_dir_linked_to_another_users_dir(tmp_path):
    # Bob's kernel ran os.symlink(os.getcwd(), '../alice'): the link stays inside the share.
    (tmp_path / "bob").mkdir()
    os.symlink(tmp_path / "bob", tmp_path / "alice")
    result = run_in_python(enter_user_dir_code(str(tmp_path), "alice"), cwd="/")
    assert "UserDirectoryRefused" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("link", ["alice", "alice/project"])
def test_gateway_set_up_refuses_a_link_at_any_level_of_its_path(tmp_path, link):
    (tmp_path / "bob").mkdir()
    (tmp_path / link).parent.mkdir(exist_ok=True)
    os.symlink(tmp_path / "bob", tmp_path / link)
    target = str(tmp_path / "alice" / "project" / "notebooks")
    result = run_in_python(set_up_code(str(tmp_path), target), cwd="/")
    assert "UserDirectoryRefused" in result.stderr
    assert list((tmp_path / "bob").iterdir()) == []


def test_set_up_enters_the_user_dir_of_a_working_dir_that_is_a_link(tmp_path):
    # The operator's share may itself be a link (a mount path): only links below it count.
    (tmp_path / "mnt").mkdir()
    os.symlink(tmp_path / "mnt", tmp_path / "share")
    result = run_in_python(enter_user_dir_code(str(tmp_path / "share"), "zt"), cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "mnt" / "zt")
    for target in (tmp_path / "share" / "a", tmp_path / "mnt" / "b"):
        result = run_in_python(set_up_code(str(tmp_path / "share"), str(target)), cwd="/")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(tmp_path / "mnt" / target.name)
