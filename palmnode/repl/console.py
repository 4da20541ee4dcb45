"""The opt-in Python console inside the running node (the REPL's ``py`` command).

Like trio's own ``python -m trio`` (trio/_repl.py): source is compiled with top-level ``await``
allowed (``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``); a compiled statement that awaits is a coroutine
function, awaited here — in the node's own trio loop, as a task of the REPL session, so ``await
node.lights.set("ir", 0.5)`` just works and an ``interrupt`` from the client cancels it.
Unlike trio's REPL no thread reads a terminal: the client sends source and we answer with what
the statement printed.

What a statement writes to ``sys.stdout``/``sys.stderr`` is captured for its session only (a
context variable routes the writes, so other tasks' output and other sessions are untouched).
"""
from __future__ import annotations

import ast
import codeop
import contextlib
import contextvars
import inspect
import io
import sys
import traceback
import types
from typing import Any, Iterator

import attrs


@attrs.frozen
class ConsoleOutput:
    """What one submission gave: ``more`` when the source is incomplete (send more lines)."""

    text: str
    more: bool = False
    exit: bool = False


class Console:
    """One session's Python namespace and compiler."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = {"__name__": "__console__", "__builtins__": __builtins__, **namespace}
        self._compile = codeop.CommandCompiler()
        self._compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

    async def run(self, source: str) -> ConsoleOutput:
        """Compile and run ``source`` (one statement or block, as typed at ``>>>``)."""
        out = io.StringIO()
        try:
            code = self._compile(source, "<palmnode>", "single")
        except (SyntaxError, ValueError, OverflowError):
            out.write("".join(traceback.format_exception_only(*sys.exc_info()[:2])))
            return ConsoleOutput(out.getvalue())
        if code is None:
            return ConsoleOutput("", more=True)
        function = types.FunctionType(code, self.namespace)
        with _captured(out):
            try:
                if inspect.CO_COROUTINE & code.co_flags:
                    await function()
                else:
                    function()
            except SystemExit:
                return ConsoleOutput(out.getvalue(), exit=True)
            except (Exception, KeyboardInterrupt) as exc:
                _print_exception(exc, out)
        return ConsoleOutput(out.getvalue())


def _print_exception(exc: BaseException, out: io.StringIO) -> None:
    # drop our own frame, as the interactive interpreter does
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    out.write("".join(traceback.format_exception(type(exc), exc, tb)))


# -- per-session stdout/stderr

_output: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar("palmnode_console_output",
                                                                              default=None)
_installed = 0


class _Router(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: a console session's writes go to its buffer."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def write(self, text: str) -> int:
        target = _output.get()
        return (target if target is not None else self.original).write(text)

    def flush(self) -> None:
        if _output.get() is None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


@contextlib.contextmanager
def _captured(out: io.StringIO) -> Iterator[None]:
    global _installed
    if _installed == 0:
        sys.stdout, sys.stderr = _Router(sys.stdout), _Router(sys.stderr)
    _installed += 1
    token = _output.set(out)
    try:
        yield
    finally:
        _output.reset(token)
        _installed -= 1
        if _installed == 0:
            if isinstance(sys.stdout, _Router):
                sys.stdout = sys.stdout.original
            if isinstance(sys.stderr, _Router):
                sys.stderr = sys.stderr.original


BANNER = ("Python {version} in the running node ({node_id}). Top-level await works: "
          "await node.lights.set('ir', 0.2). Names: node, trio. Ctrl-D leaves.")


def banner(node_id: str) -> str:
    return BANNER.format(version=sys.version.split()[0], node_id=node_id)


__all__ = ["Console", "ConsoleOutput", "banner"]
