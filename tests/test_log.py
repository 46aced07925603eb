"""neox.log: rank 0's lines only (unless marked for every rank), prefixed by level, to the current stdout."""

import logging

from neox.log import ALL_RANKS, HANDLER, get_logger


def test_rank_filter_prefixes_and_level(monkeypatch, capsys):
    log = get_logger("neox.tests.log")
    monkeypatch.setenv("RANK", "0")
    log.info("step 1 | loss 2.0")
    log.warning("vocab_size 40 is larger than the tokenizer's 32")
    log.error("disk full")
    monkeypatch.setenv("RANK", "1")
    log.info("rank 1: not shown")
    log.warning("rank 1: not shown either")
    log.warning("rank 1 hung in all-reduce", extra=ALL_RANKS)
    assert capsys.readouterr().out.splitlines() == [
        "step 1 | loss 2.0", "warning: vocab_size 40 is larger than the tokenizer's 32", "error: disk full",
        "warning: rank 1 hung in all-reduce"]
    monkeypatch.setenv("RANK", "0")
    root = logging.getLogger("neox")
    level = root.level
    try:
        root.setLevel(logging.WARNING)  # what NEOX_LOG_LEVEL=WARNING sets
        log.info("hidden")
        log.warning("shown")
    finally:
        root.setLevel(level)
    assert capsys.readouterr().out == "warning: shown\n"
    get_logger("x")
    assert [h.get_name() for h in root.handlers].count(HANDLER) == 1  # installed once
