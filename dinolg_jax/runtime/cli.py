"""How the tools meet a person: one-line errors, exit codes, and quiet library logs.

``cli.run(main)`` replaces ``absl.app.run(main)`` in ``tools/*.py``:

- Usage errors (a flag absl rejects, a ``--config.key`` that does not exist, a config
  file that does not load, `UsageError` / ``app.UsageError`` raised by the tool, e.g. a
  path that does not exist or a wrong mode) print ``error: ...`` on one line and exit 2,
  before any model or data is loaded.
- Data errors (``OSError``s such as a missing file, every exception class defined in
  this project: ``ManifestError``, ``CocaError``, ``DicomError``, ``ConvertError``,
  ``CheckpointError``, ``NonFiniteLossError``, ..., and a ``ValueError`` this project's
  code raises itself) print ``error: ...`` on one line and exit 1.
- Ctrl-C outside a training loop (which treats it as SIGTERM: ``runtime.run``) prints
  one ``error: interrupted`` line and exits 130.
- Anything else is a bug and keeps its traceback.
- Unless ``--verbosity`` (or ``-v``) is given, log records below ERROR from libraries
  (Orbax, JAX, Grain, etils, ...) are dropped from the terminal; this project's own log
  lines (training progress) stay. With ``--verbosity`` everything is shown, and an error
  also shows its traceback.

Helpers for the checks a tool makes up front: `require_dir`, `require_file`,
`require_choice`, `no_arguments`; `training_flags` defines a training tool's
``--config`` / ``--workdir`` (and the multi-process flags).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from absl import app, flags
from absl import logging as absl_logging

EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
_OWN_CODE = (os.sep + "dinolg_jax" + os.sep, os.sep + "tools" + os.sep)


class UsageError(app.UsageError):
    """The command line asks for something that cannot be (exit status 2)."""


def one_line(err: BaseException, limit: int = 600) -> str:
    """An exception's message as one line (ConfigDict's quoted keys unquoted)."""
    text = str(err.args[0]) if len(err.args) == 1 else str(err)
    if isinstance(err, KeyError) or (err.args and isinstance(err.args[0], KeyError)):
        text = text.strip("'\"").replace("\\'", "'").replace("\\n", "\n")
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(message: str, code: int = EXIT_DATA) -> NoReturn:
    """Prints ``error: message`` to stderr and exits with `code`."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def verbose() -> bool:
    """Whether ``--verbosity`` (or ``-v``) was given: library logs and tracebacks shown."""
    try:
        return bool(flags.FLAGS["verbosity"].present)
    except (KeyError, flags.Error):
        return False


def is_data_error(err: BaseException) -> bool:
    """OSErrors, the project's own exception classes (module ``dinolg_jax.*``), and a
    ``ValueError`` raised by a ``raise`` in this project's code (a deliberate message)."""
    if isinstance(err, OSError):
        return True
    if any(c.__module__.startswith("dinolg_jax.") for c in type(err).__mro__):
        return True
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    own = last is not None and any(p in last.tb_frame.f_code.co_filename for p in _OWN_CODE)
    return isinstance(err, ValueError) and own


def _library_chatter(record: std_logging.LogRecord) -> bool:
    """Filter: keeps ERROR+ and this project's records; drops libraries' INFO/WARNING."""
    if record.levelno >= std_logging.ERROR:
        return True
    return any(part in record.pathname for part in _OWN_CODE)


def quiet_libraries() -> None:
    """Drops library INFO/WARNING records from the absl handler (see module docstring)."""
    handler = absl_logging.get_absl_handler()
    if _library_chatter not in handler.filters:
        handler.addFilter(_library_chatter)


def _essence(err: BaseException) -> str:
    """The telling line of a message that carries a traceback or a list of attempts."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]  # the exception line that ends the embedded traceback
    errno = [ln for ln in lines if ln.startswith("[Errno")]
    return errno[-1] if errno else one_line(err)


def _config_message(err: BaseException) -> str:
    """A failed ``--config.key=value`` override as one sentence: an unknown key (and the
    key ml_collections suggests instead), or the override's own message."""
    text = one_line(err)
    if isinstance(err, AttributeError | KeyError):
        # ml_collections nests the KeyError's quoted text, escapes included: unwrap it.
        head, _, tail = text.partition("Did you mean")
        key = re.sub(r"\\n|[\\'\"]", "", head).strip()
        if re.fullmatch(r"[A-Za-z_]\w*", key):
            suggestion = re.match(r'\s*"([^"]+)"', tail)
            hint = f'. Did you mean "{suggestion.group(1)}"?' if suggestion else ""
            return f"no config key {key!r}{hint}"
    return text


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with every failure as one ``error:`` line and exit 2."""
    try:
        rest = flags.FLAGS(list(argv))
    except flags.Error as e:
        fail(f"{_essence(e)} (--helpshort lists the flags)", EXIT_USAGE)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.x overrides
        fail(f"bad config override: {_config_message(e)}", EXIT_USAGE)
    # Config files load lazily: load them now, so their errors are usage errors too.
    for name in list(flags.FLAGS):
        try:
            value = flags.FLAGS[name].value
            if type(value).__name__ == "_ErrorConfig":  # ml_collections' deferred failure
                value["load"]  # raises the load error
        except Exception as e:
            if _verbose_argv(argv):
                raise
            fail(
                f"--{name}={flags.FLAGS[name].serialize().split('=', 1)[-1]}: {_essence(e)}",
                EXIT_USAGE,
            )
    return rest


def _verbose_argv(argv: Iterable[str]) -> bool:
    return any(a.startswith(("--verbosity", "-v")) for a in argv)


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the error and logging policy of the module docstring."""

    def guarded(argv: list[str]) -> Any:
        if not verbose():
            quiet_libraries()
        try:
            return main(argv)
        except KeyboardInterrupt:
            if verbose():
                raise
            fail(
                "interrupted (Ctrl-C); a training run keeps its last checkpoint: re-run "
                "the same command to resume",
                EXIT_INTERRUPTED,
            )
        except app.UsageError as e:
            if verbose():
                raise
            fail(one_line(e), EXIT_USAGE)
        except Exception as e:
            if verbose() or not is_data_error(e):
                raise
            fail(one_line(e), EXIT_DATA)

    app.run(guarded, flags_parser=_parse_flags)


# kind -> (is a path of that kind, is a path of the other kind (given that it is not of
# this one), the other kind's name).
_PATH_KINDS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], bool], str]] = {
    "folder": (Path.is_dir, Path.exists, "file"),
    "file": (Path.is_file, Path.is_dir, "folder"),
}


def _require_path(path: str | os.PathLike | None, flag: str, hint: str, kind: str) -> Path:
    """`path` as a Path if it is a `kind` ("folder" or "file"), else a `UsageError`
    naming `flag` (and `hint`): not given, of the other kind, or missing."""
    if not path:
        raise UsageError(f"{flag} is required{': ' + hint if hint else ''}")
    p = Path(path)
    is_kind, is_other, other = _PATH_KINDS[kind]
    if not is_kind(p):
        what = f"is a {other}, not a {kind}" if is_other(p) else "does not exist"
        raise UsageError(f"{flag}={p} {what}{'; ' + hint if hint else ''}")
    return p


def require_dir(path: str | os.PathLike | None, flag: str, hint: str = "") -> Path:
    """`path` as a Path if it is a folder, else a `UsageError` naming `flag`."""
    return _require_path(path, flag, hint, "folder")


def require_file(path: str | os.PathLike | None, flag: str, hint: str = "") -> Path:
    """`path` as a Path if it is a file, else a `UsageError` naming `flag`."""
    return _require_path(path, flag, hint, "file")


def require_choice(value: Any, choices: Iterable[Any], flag: str) -> Any:
    """`value` if it is one of `choices`, else a `UsageError` listing them."""
    choices = list(choices)
    if value not in choices:
        raise UsageError(f"{flag}={value!r} is not one of {choices}")
    return value


def no_arguments(argv: Sequence[str]) -> None:
    """Raises `UsageError` when the command line has positional arguments after flags."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {list(argv[1:])}")


def training_flags(what: str) -> tuple[Any, Any, Callable[[], bool]]:
    """Defines ``--config`` (an ml_collections config file, "<what> config file") and
    ``--workdir`` (output and resume directory), both required, and the multi-process
    flags (``runtime.mesh.define_distributed_flags``).

    Returns:
      ``(config flag, workdir flag, init_distributed)``: read ``.value`` of the flags in
      ``main``; call ``init_distributed()`` before anything touches the devices.
    """
    from ml_collections import config_flags

    from dinolg_jax.runtime import mesh as mesh_lib

    config = config_flags.DEFINE_config_file("config", None, f"{what} config file.")
    workdir = flags.DEFINE_string("workdir", None, "Output (and resume) directory.")
    init_distributed = mesh_lib.define_distributed_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir, init_distributed
