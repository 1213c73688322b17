"""Configuration: /etc/mssendmail/.env, overridden by environment variables.

Paths stay plain strings: importing pathlib is a large share of what a
submission may spend (bench/RESULTS.md, Submission).
The file is read only if the caller can read it: submitters normally cannot
(it holds the secrets), and then run on defaults plus their environment.
Submission must stay fast, so it parses plain ``KEY=value`` lines itself and
hands anything fancier (quotes with escapes, ``${VAR}`` expansion) to
python-dotenv, whose import alone would be slower than the whole submission.

A line python-dotenv cannot parse (or a bare ``KEY`` without ``=``) is kept in
``Config.syntax_errors``: the worker and smtpd refuse to start on one
(``Config.check_syntax``), `check` calls it a FAIL, and submission warns and
queues the mail anyway (an admin's typo must not lose a submitter's mail).
"""

from __future__ import annotations

import os

from mssendmail.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:  # collections.abc imports the collections package: not on submission
    from collections.abc import Mapping

DEFAULT_PATH = "/etc/mssendmail/.env"
ENV_PATH_VAR = "MSSENDMAIL_CONFIG"

MIB = 1024 * 1024

# Every key with its default ("" = unset). The table in docs/configuration.md mirrors this one.
DEFAULTS: dict[str, str] = {
    # Credentials: exactly one kind must be configured for TRANSPORT=graph.
    "TENANT_ID": "",
    "CLIENT_ID": "",
    "CLIENT_SECRET": "",
    "CLIENT_CERTIFICATE": "",
    "CLIENT_CERTIFICATE_PASSWORD": "",
    "FEDERATED_TOKEN_FILE": "",
    "MANAGED_IDENTITY": "",
    # Mailbox and address policy.
    "SENDER": "",
    "FROM_NAME": "",
    "ALLOWED_FROM": "",
    "ALLOWED_FROM_USERS": "",
    "ALIASES": "",
    "ADMIN_ADDRESS": "",
    "LOCAL_DOMAIN": "",
    # Charset for 8-bit text that is not UTF-8 and says no charset (delivery/mime.py).
    "DEFAULT_CHARSET": "iso-8859-1",
    # Where things live.
    "QUEUE_DIR": "/var/lib/mssendmail/queue",
    "LOG_DIR": "",
    "MAX_MESSAGE_SIZE": str(35 * MIB),
    # Graph endpoints.
    "CLOUD": "global",
    "AUTHORITY_HOST": "",
    "GRAPH_URL": "",
    "GRAPH_TIMEOUT": "120s",
    # How to reach them (graph/network.py); unset: the standard variables.
    "HTTPS_PROXY": "",
    "NO_PROXY": "",
    "CA_BUNDLE": "",
    # Delivery policy.
    "TRANSPORT": "graph",
    "OUTBOX_DIR": "",
    "CONCURRENCY": "4",
    "WORKER_CPU": "auto",
    "RETRY_MIN": "60s",
    "RETRY_MAX": "1h",
    "MAX_AGE": "5d",
    "MAX_ATTEMPTS": "",
    "DEAD_LETTER_NOTIFY": "",
    "SENT_RETENTION": "7d",
    "CORRUPT_RETENTION": "7d",
    # Per-message limits (mssendmail.delivery.limits): over one = dead letter naming it.
    "MAX_ATTACHMENTS": "250",
    "MAX_MIME_PARTS": "1000",
    "MAX_MIME_DEPTH": "20",
    "MAX_HEADER_RECIPIENTS": "1000",
    "MAX_GRAPH_REQUESTS": "500",
    "MAX_QUEUED_PER_USER": "",
    # Exactly once and mailbox protection (docs/delivery-safety.md).
    "SENT_ITEMS_DELAY": "5m",
    "DAILY_RECIPIENT_LIMIT": "10000",
    "MAILBOX_RATE": "",
    "SENT_ITEMS": "keep",
    # SMTP listener (mssendmail-smtpd).
    "SMTPD_LISTEN": "127.0.0.1:2525",
    "SMTPD_TLS_CERT": "",
    "SMTPD_TLS_KEY": "",
    "SMTPD_USERS_FILE": "",
    "SMTPD_MAX_CLIENTS": "20",
    "SMTPD_MAX_PER_PEER": "10",
    "SMTPD_COMMAND_TIMEOUT": "60s",
    "SMTPD_MIN_DATA_RATE": "1K",
    "SMTPD_SESSION_TIMEOUT": "10m",
}

MAX_MESSAGE_SIZE_CAP = 150 * MIB
MAX_NUMBER = 1e15  # larger durations and sizes are typos (or 1e400)

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": MIB,
    "mb": MIB,
    "mib": MIB,
    "g": 1024 * MIB,
    "gb": 1024 * MIB,
    "gib": 1024 * MIB,
}


def resolve_path(cli_path: str | None = None) -> str:
    """--config wins, then $MSSENDMAIL_CONFIG, then the default path."""
    return cli_path or os.environ.get(ENV_PATH_VAR) or DEFAULT_PATH


def _unquote_simple(raw: str) -> str | None:
    """The value of a plain dotenv line, or None when only python-dotenv can say.

    `raw` is what follows the '='. Unquoted, a '#' after white space starts a
    comment; a value that starts with '#' is left to python-dotenv, whose
    versions read ``A= #x`` differently.
    """
    value = raw.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        if end < 0 or "\\" in value or (quote == '"' and "$" in value):
            return None
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            return None
        return value[1:end]
    if "$" in raw or "\\" in raw or not raw.replace(" ", "x").isprintable():
        return None  # a tab or other white space: dotenv's own rules decide
    if value.startswith("#"):
        return None  # `A= #x`: python-dotenv versions disagree; the installed one decides
    hash_at = raw.find(" #")
    return (raw[:hash_at] if hash_at >= 0 else raw).strip()


def parse_env_text(text: str) -> tuple[dict[str, str], list[str]]:
    """The values of .env text and its syntax errors (``line N (KEY...): why``).

    Exotic syntax, and anything wrong, is delegated to python-dotenv for exactness.
    """
    values: dict[str, str] = {}
    # Lines end where dotenv's do: str.splitlines() would also split at \v, \f
    # and the Unicode line separators, which dotenv keeps inside a line.
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, raw = line.partition("=")
        key = key.strip()
        simple = _unquote_simple(raw) if sep and key.isidentifier() else None
        if simple is None:
            return _parse_with_dotenv(text)
        values[key] = simple
    return values, []


def _parse_with_dotenv(text: str) -> tuple[dict[str, str], list[str]]:
    """What dotenv_values(interpolate=True) gives, plus the lines it skipped.

    dotenv_values only logs "could not parse statement" for those; its own
    parser marks them (Binding.error), so read them from there.
    """
    import io

    from dotenv.main import resolve_variables
    from dotenv.parser import parse_stream

    pairs: list[tuple[str, str | None]] = []
    errors: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        statement = binding.original.string
        blank = statement[: len(statement) - len(statement.lstrip())]
        line = binding.original.line + blank.count("\n")  # it counts from the blank lines before
        where = f"line {line} ({_key_hint(statement)})"
        if binding.error:
            errors.append(f"{where} cannot be parsed")
        elif binding.key is not None and binding.value is None:
            errors.append(f"{where} has no '='")
        elif binding.key is not None:
            pairs.append((binding.key, binding.value))
    parsed = resolve_variables(pairs, override=True)
    return {k: v for k, v in parsed.items() if v is not None}, errors


def _key_hint(statement: str) -> str:
    """The name a bad line starts with; never its value, which may be a secret."""
    text = statement.strip()
    if text.startswith("export "):
        text = text[7:].lstrip()
    name = ""
    for char in text[:40]:
        if not (char.isalnum() or char in "_.-"):
            break
        name += char
    return f"starts with {name}" if name else "not KEY=value"


def read_file(path: str) -> tuple[dict[str, str], bool, list[str]]:
    """The file's values, whether it was readable, and its syntax errors.

    A missing or unreadable file is empty.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        return {}, False, []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}; fix the file") from exc
    values, errors = parse_env_text(text)
    return values, True, errors


class Config:
    """Typed, validated access to the keys; each property names its key on error."""

    def __init__(
        self,
        values: Mapping[str, str],
        path: str | None = None,
        file_readable: bool = False,
        file_keys: frozenset[str] = frozenset(),
        syntax_errors: tuple[str, ...] = (),
    ) -> None:
        self.values = dict(values)
        self.path = path
        self.file_readable = file_readable
        self.file_keys = file_keys
        self.syntax_errors = syntax_errors

    def syntax_problem(self) -> str | None:
        """One line naming the file, the first bad line and the fix; None if it parses."""
        if not self.syntax_errors:
            return None
        more = len(self.syntax_errors) - 1
        also = f" (and {more} more line{'s' if more > 1 else ''})" if more else ""
        return (
            f"config {self.path} {self.syntax_errors[0]}{also}; write each setting as "
            "KEY=value (quote a value holding quotes, or ' #'), then run 'mssendmail-queue check'"
        )

    def check_syntax(self) -> None:
        """ConfigError (exit 78) for a file with a line that does not parse."""
        problem = self.syntax_problem()
        if problem is not None:
            raise ConfigError(problem)

    def get(self, key: str) -> str:
        return self.values.get(key, DEFAULTS.get(key, "")).strip()

    def unknown_keys(self) -> list[str]:
        """Keys in the file that mssendmail does not know (typos, usually)."""
        return sorted(k for k in self.file_keys if k not in DEFAULTS)

    @property
    def queue_dir(self) -> str:
        return self.get("QUEUE_DIR")

    @property
    def log_dir(self) -> str | None:
        return self.get("LOG_DIR") or None

    @property
    def max_message_size(self) -> int:
        size = self.size("MAX_MESSAGE_SIZE")
        if not 0 < size <= MAX_MESSAGE_SIZE_CAP:
            raise ConfigError("MAX_MESSAGE_SIZE must be between 1 byte and 150 MiB")
        return size

    def size(self, key: str) -> int:
        return _parse_number(key, self.get(key), _SIZE_UNITS, "a size like 35M")

    def seconds(self, key: str) -> float:
        return float(_parse_number(key, self.get(key), _UNITS, "a duration like 60s, 1h or 5d"))

    def optional_int(self, key: str) -> int | None:
        value = self.get(key)
        return None if not value else self.integer(key)

    def integer(self, key: str) -> int:
        value = self.get(key)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a whole number") from None

    def addresses(self, key: str) -> list[str]:
        return [part.strip() for part in self.get(key).split(",") if part.strip()]


def _parse_number(key: str, value: str, units: Mapping[str, int], example: str) -> int:
    text = value.strip().lower()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :].strip()
    try:
        number = float(digits)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not {example}") from None
    # NaN and 1e400 (inf) parse as floats; int() of them raised a traceback.
    if unit not in units or not 0 <= number <= MAX_NUMBER:
        raise ConfigError(f"{key}={value!r} is not {example} (at most {MAX_NUMBER:.0e})")
    return int(number * units[unit])


def load(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: file values, then environment overrides."""
    env = os.environ if environ is None else environ
    path = resolve_path(cli_path)
    file_values, readable, errors = read_file(path)
    values = dict(file_values)
    for key in DEFAULTS:
        if key in env:
            values[key] = env[key]
    return Config(values, path, readable, frozenset(file_values), tuple(errors))
