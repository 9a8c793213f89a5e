"""An error raised while handling another names it as its cause (``raise X(...) from exc``),
so the OS, tar or JSON error behind a StoreError stays inspectable (``__cause__``) and is
shown as the direct cause in a traceback. Held over every file under plugins/."""
from __future__ import annotations

import ast
import os
from typing import Iterator, List

from tests.support.paths import REPO


def _body_nodes(handler: ast.ExceptHandler) -> Iterator[ast.AST]:
    """The handler's statements and expressions, not those of functions defined in it."""
    todo: List[ast.AST] = list(handler.body)
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)))


def _unchained(path: str) -> List[str]:
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for handler in ast.walk(tree):
        if not isinstance(handler, ast.ExceptHandler):
            continue
        for node in _body_nodes(handler):
            if not isinstance(node, ast.Raise) or node.exc is None or node.cause is not None:
                continue
            if isinstance(node.exc, ast.Name) and node.exc.id == handler.name:
                continue    # the caught error itself, raised again
            where = "%s:%d" % (os.path.relpath(path, REPO), node.lineno)
            found.append("%s: raise %s" % (where, ast.unparse(node.exc)[:60]))
    return found


def test_every_error_raised_in_an_except_block_names_its_cause():
    found = []
    for top, _dirs, files in os.walk(os.path.join(REPO, "plugins")):
        found += [line for name in sorted(files) if name.endswith(".py")
                  for line in _unchained(os.path.join(top, name))]
    assert not found, "add 'from exc' (or 'from None', saying why):\n" + "\n".join(found)


def test_the_check_finds_a_raise_without_from(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("try:\n    pass\nexcept OSError as exc:\n    raise ValueError('x')\n"
                      "try:\n    pass\nexcept OSError as exc:\n    raise ValueError('x') from exc\n"
                      "try:\n    pass\nexcept OSError as exc:\n    raise exc\n")
    assert [line.split(": ", 1)[1] for line in _unchained(str(sample))] == [
        "raise ValueError('x')"]
