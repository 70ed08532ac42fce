"""Secret: a token that cannot print itself, revealed only by name; Config holds its token so."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pickle
from pathlib import Path

import pytest

from trackssl_agent import log
from trackssl_agent.config import config
from trackssl_agent.config.secret import Secret

RAW = "tsk_secret_Vx93QpLm7a"


def test_every_way_of_printing_masks_it() -> None:
    """repr, str, format, f-strings and %-formatting all show the mask, never the value."""
    secret = Secret(RAW)
    shown = [repr(secret), str(secret), format(secret), f"{secret}", f"{secret!r}"]
    shown.append("%s" % secret)  # noqa: UP031 - the logging style, on purpose
    shown.append(f"{secret:>30}")
    assert all(RAW not in text for text in shown)
    assert all(log.REDACTED in text for text in shown)


def test_reveal_is_the_way_to_the_value() -> None:
    """reveal() returns the raw value; length and truth work without revealing."""
    secret = Secret(RAW)
    assert secret.reveal() == RAW
    assert (len(secret), bool(secret), bool(Secret(""))) == (len(RAW), True, False)


def test_json_and_pickle_refuse_it() -> None:
    """json.dumps raises (or masks with default=str); pickle refuses to write it anywhere."""
    with pytest.raises(TypeError):
        json.dumps({"token": Secret(RAW)})
    assert RAW not in json.dumps({"token": Secret(RAW)}, default=str)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(RAW))


def test_copies_and_equality() -> None:
    """Copies are the same secret; equal values compare equal, others not."""
    secret = Secret(RAW)
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret
    assert secret == Secret(RAW)
    assert secret != Secret(RAW + "x")
    assert secret != RAW  # a Secret never equals plain text: compare revealed values


@pytest.mark.parametrize("fmt", log.FORMATS)
def test_log_lines_mask_it_even_when_revealed(fmt: str) -> None:
    """In every log format, a log line given the Secret shows the mask; one given the raw
    value by mistake is redacted by the formatter, which learned the value when the Secret
    was made."""
    secret = Secret(RAW)
    logger = log.setup_logging(level="debug", stream=None, fmt=fmt)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logger.handlers[0].formatter)
    logger.addHandler(handler)
    try:
        logger.info("token %s", secret)
        logger.info("leaked %s", secret.reveal())
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2
    assert all(RAW not in line and log.REDACTED in line for line in records)


def test_config_holds_the_token_as_a_secret(tmp_path: Path) -> None:
    """Config's auth token is a Secret: its repr, asdict and settings never hold the text."""
    cfg = config.load(environ={"TRACKSSL_AUTH_TOKEN": RAW}, cwd=tmp_path)
    assert isinstance(cfg.auth_token, Secret)
    assert cfg.auth_token.reveal() == RAW
    assert RAW not in repr(cfg)
    assert RAW not in repr(dataclasses.asdict(cfg))
    assert all(RAW not in setting.value for setting in cfg.settings.values())
    assert all(RAW not in value for _key, value, _origin in cfg.describe())
