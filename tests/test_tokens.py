"""The special tokens are defined in ONE place, minicap/tokens.py, and so are the rules of which tokens count in a
loss (`target_mask`), have a probability (`predictable_tokens`) and may be written by a decoder (`decodable_tokens`).

The first tests read the package's source with `ast`: no other module may define a token (an assignment of NULL,
START, END, UNK or SPECIAL_TOKENS at module or class level, or any NULL_ID / START_ID / END_ID / UNK_ID anywhere)
or spell one as a string literal in code ("<NULL>" …; docstrings and comments may mention them freely).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from minicap import tokens
from minicap.text import Vocabulary
from minicap.tokens import (
    END,
    NULL,
    SPECIAL_TOKENS,
    START,
    UNK,
    decodable_tokens,
    predictable_tokens,
    target_mask,
)

PACKAGE = Path(tokens.__file__).resolve().parent
TOKENS_MODULE = PACKAGE / "tokens.py"

TOKEN_NAMES = {"NULL", "START", "END", "UNK", "SPECIAL_TOKENS"}  # may be assigned only in tokens.py
ID_NAMES = {"NULL_ID", "START_ID", "END_ID", "UNK_ID"}  # the old names: nowhere, in no scope
TOKEN_STRINGS = {"<NULL>", "<START>", "<END>", "<UNK>"}


# ---------------------------------------------------------------------------------------- one definition


def _assigned_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds: `a`, `a, b = …`, `[a, *b] = …` (not attributes or subscripts)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _assigned_names(element)]
    if isinstance(target, ast.Starred):
        return _assigned_names(target.value)
    return []


def _bindings(statement: ast.stmt) -> list[str]:
    """Names bound by one statement: assignments of every kind and import aliases."""
    if isinstance(statement, ast.Assign):
        return [name for target in statement.targets for name in _assigned_names(target)]
    if isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        return _assigned_names(statement.target)
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return [alias.asname or alias.name.split(".")[0] for alias in statement.names]
    return []


def _documentation(tree: ast.AST) -> set[int]:
    """ids of the string constants that are documentation: docstrings, and any string standing alone as a
    statement (an attribute's docstring after its assignment)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docs.add(id(node.value))
    return docs


def token_violations(source: str, filename: str = "<module>") -> list[str]:
    """Every place in `source` that defines a special token outside minicap/tokens.py (see the module docstring)."""
    tree = ast.parse(source, filename)
    found = []
    # Module and class level: the statements of the module body and of every class body (nested classes too).
    scopes = [tree] + [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for scope in scopes:
        for statement in scope.body:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                continue  # `from minicap.tokens import NULL` is how a module uses a token
            for name in _bindings(statement):
                if name in TOKEN_NAMES:
                    found.append(f"{filename}:{statement.lineno}: assigns {name}")
    # The old *_ID names: nowhere in code at all — no variable, parameter, attribute or import of that name.
    for node in ast.walk(tree):
        names = {
            ast.Name: lambda n: [n.id],
            ast.arg: lambda n: [n.arg],
            ast.Attribute: lambda n: [n.attr],
            ast.alias: lambda n: [n.name.split(".")[-1], n.asname],
            ast.ExceptHandler: lambda n: [n.name],
        }.get(type(node), lambda n: [])(node)
        for name in names:
            if name in ID_NAMES:
                found.append(f"{filename}:{getattr(node, 'lineno', '?')}: names {name}")
    # The token strings as values in code (docstrings may mention them).
    docs = _documentation(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value.strip() in TOKEN_STRINGS:
                found.append(f"{filename}:{node.lineno}: spells {node.value.strip()!r}")
    return found


def _package_modules() -> list[Path]:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert TOKENS_MODULE in modules and len(modules) > 20
    return modules


def test_no_module_but_tokens_defines_a_special_token():
    violations = []
    for path in _package_modules():
        if path == TOKENS_MODULE:
            continue
        violations += token_violations(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not violations, "special tokens are defined only in minicap/tokens.py:\n" + "\n".join(violations)


def test_tokens_module_defines_every_token_and_imports_nothing_of_minicap():
    tree = ast.parse(TOKENS_MODULE.read_text(encoding="utf-8"))
    defined = {name for statement in tree.body for name in _bindings(statement)}
    assert TOKEN_NAMES <= defined
    assert not ID_NAMES & defined
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module.split(".")[0] == "minicap" for module in imported), imported  # the bottom of the package
    assert token_violations(TOKENS_MODULE.read_text(encoding="utf-8"))  # the check does see its definitions


@pytest.mark.parametrize(
    "source",
    [
        "NULL_ID = 0",
        "NULL = 0",
        "START, END = 1, 2",
        "SPECIAL_TOKENS: tuple = ()",
        "class Vocab:\n    UNK = 3",
        "class A:\n    class B:\n        END = 2",
        "def f():\n    END_ID = 2\n    return END_ID",
        "def f(UNK_ID=3):\n    return UNK_ID",
        "x = [(END_ID := 2)]",
        "for START_ID in range(3):\n    pass",
        "x = tokens.NULL_ID",
        "from minicap.tokens import UNK_ID",
        "from minicap.tokens import START as START_ID",
        "x = '<NULL>'",
        "WORDS = ('<START>', 'a')",
        "def f():\n    return {'<END>': 2}",
        "def f(w):\n    return w == ' <UNK> '",
    ],
)
def test_the_check_catches_a_second_definition(source):
    """Negative controls: each of these would be a second definition of a token, and is reported."""
    assert token_violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from minicap.tokens import END, NULL, SPECIAL_TOKENS, START, UNK",
        "from minicap import tokens\nx = tokens.END",
        '"""Rows are <START> w1 … <END> <NULL>."""',
        'def f():\n    """Never writes <UNK>."""\n    end = 2  # <END>\n    return end',
        'class C:\n    """Skips <NULL> and <START>."""',
        "x = 1\n'''The <END> count.'''",
        "raise ValueError('every caption row must start with <START> (as encode_captions makes them)')",
        "def f():\n    START = 1\n    return START",  # a local variable defines nothing for anyone else
    ],
)
def test_the_check_allows_uses_and_documentation(source):
    assert not token_violations(source), source


def test_a_second_definition_in_a_real_module_fails_the_check(tmp_path):
    """The check on the package's own files, with `NULL_ID = 0` added to one of them, fails."""
    source = (PACKAGE / "decode.py").read_text(encoding="utf-8")
    assert not token_violations(source)
    line = source.count("\n") + 2
    assert token_violations(source + "\nNULL_ID = 0\n") == [f"<module>:{line}: names NULL_ID"]


# --------------------------------------------------------------------------------------------- the values


def test_the_tokens_and_their_ids():
    assert (NULL, START, END, UNK) == (0, 1, 2, 3)
    assert SPECIAL_TOKENS == ("<NULL>", "<START>", "<END>", "<UNK>")
    assert [SPECIAL_TOKENS[i] for i in (NULL, START, END, UNK)] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert set(tokens.__all__) >= TOKEN_NAMES | {"target_mask", "predictable_tokens", "decodable_tokens"}


def test_the_vocabulary_puts_the_tokens_at_their_ids():
    vocab = Vocabulary.build([["a", "dog"], ["a", "cat"]], min_count=2)
    assert tuple(vocab.idx_to_word[:4]) == SPECIAL_TOKENS
    assert all(vocab.word_to_idx[word] == i for i, word in enumerate(SPECIAL_TOKENS))
    assert vocab.encode(["a", "zebra"]) == [START, vocab.word_to_idx["a"], UNK, END]
    assert vocab.counts[END] == 2 and vocab.counts[UNK] == 2 and vocab.counts[NULL] == vocab.counts[START] == 0


# ------------------------------------------------------------------------------------------------- the rules


def test_target_mask_stops_at_the_first_end():
    targets = np.array([[5, 6, END, NULL, NULL], [5, END, 7, END, 9], [4, 5, 6, 7, 8]])
    expected = np.array(
        [[True, True, True, False, False], [True, True, False, False, False], [True, True, True, True, True]]
    )
    np.testing.assert_array_equal(target_mask(targets), expected)


def test_target_mask_edge_cases():
    # A caption whose first target is <END> counts exactly that one; an all-<NULL> row counts nothing.
    np.testing.assert_array_equal(target_mask(np.array([[END, NULL, NULL]])), [[True, False, False]])
    np.testing.assert_array_equal(target_mask(np.array([[NULL, NULL]])), [[False, False]])
    # <NULL> inside a caption (before its <END>) never counts; <UNK> does (it is a word the model must predict).
    np.testing.assert_array_equal(target_mask(np.array([[UNK, NULL, 5, END]])), [[True, False, True, True]])
    # Whatever follows the first <END> — words, <UNK>, <START>, another <END> — is masked.
    np.testing.assert_array_equal(
        target_mask(np.array([[END, 7, UNK, START, END]])), [[True, False, False, False, False]]
    )
    # One row on its own (a 1-D array) and a list work; the result is bool of the input's shape.
    one = target_mask([4, END, 4])
    assert one.dtype == bool and one.shape == (3,)
    np.testing.assert_array_equal(one, [True, True, False])
    assert target_mask(np.zeros((2, 0), dtype=np.int64)).shape == (2, 0)


@pytest.mark.parametrize("V", [4, 5, 11])
def test_predictable_and_decodable_tokens(V):
    predictable = predictable_tokens(V)
    assert predictable.dtype == bool and predictable.shape == (V,)
    assert not predictable[NULL] and not predictable[START]  # padding and the given first token: no probability
    assert predictable[END] and predictable[UNK] and predictable[4:].all()

    decodable = decodable_tokens(V)
    np.testing.assert_array_equal(decodable, predictable & (np.arange(V) != UNK))  # no <UNK> in a caption ...
    with_unk = decodable_tokens(V, allow_unk=True)
    np.testing.assert_array_equal(with_unk, predictable)  # ... unless asked for
    assert decodable[END]  # a decoder must be able to stop

    decodable[END] = False  # every call returns a fresh array: changing one changes no other
    assert decodable_tokens(V)[END] and predictable_tokens(V)[END] and predictable[END]


def test_a_vocabulary_too_small_for_the_tokens_is_refused():
    for V in (0, 3):
        with pytest.raises(ValueError, match="special tokens"):
            predictable_tokens(V)
        with pytest.raises(ValueError, match="special tokens"):
            decodable_tokens(V)
