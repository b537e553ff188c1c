"""userId validation and the code that moves a kernel into the user's directory."""

import ast
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jkp.user import USER_ID_PATTERN, InvalidUserId, enter_user_dir_code, validate_user_id

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


def _shape_and_arguments(code):
    """The code's syntax tree with the set-up call's arguments blanked, and those arguments."""
    tree = ast.parse(code)
    calls = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", "") == "__jkp_enter_user_dir"
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
    assert arguments == [working_dir, user_id]
    assert shape == reference_shape


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
