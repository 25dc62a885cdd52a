"""Structured logging: JSON shape, job context, per-job collection, print capture.

Everything here goes through the real ``logging`` machinery; each test uses its own job ids so
the process-wide collector never mixes tests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import uuid

import pytest

from dask_batchapi.logging import (
    MAX_LINE_BYTES,
    JobLogCollector,
    configure_cli_logging,
    current_context,
    format_line,
    install_collector,
    log_context,
    logger,
)
from dask_batchapi.worker.capture import capture_output


@pytest.fixture
def collector() -> JobLogCollector:
    return install_collector()


@pytest.fixture
def job_id() -> str:
    return f"job-{uuid.uuid4().hex}"


def _drain(collector: JobLogCollector, job_id: str) -> list[dict]:
    return [json.loads(line) for line in collector.drain(job_id)]


# -- context ---------------------------------------------------------------------------------


def test_nested_contexts_add_override_and_restore():
    with log_context(api_name="a", job_id="j1", log_level="DEBUG"):
        with log_context(batch_id="b1", job_id="j2"):
            assert current_context() == {
                "api_name": "a",
                "job_id": "j2",
                "batch_id": "b1",
                "log_level": "debug",
            }
        assert current_context() == {"api_name": "a", "job_id": "j1", "log_level": "debug"}
    assert current_context() == {}


def test_context_rejects_unknown_fields_and_levels():
    with pytest.raises(TypeError, match="unknown field.*colour"):
        with log_context(colour="red"):
            pass
    with pytest.raises(ValueError, match="log_level must be one of .* got 'verbose'"):
        with log_context(log_level="verbose"):
            pass


def test_context_is_per_thread():
    seen = {}
    with log_context(job_id="main"):
        worker = threading.Thread(target=lambda: seen.update(current_context()))
        worker.start()
        worker.join()
    assert seen == {}


# -- the JSON line ---------------------------------------------------------------------------


def test_line_has_cortex_fields(collector, job_id):
    with log_context(api_name="my-api", job_id=job_id):
        logger.info("hello %s", "world")
    [line] = _drain(collector, job_id)
    assert list(line) == ["asctime", "levelname", "message", "process", "api_name", "job_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", line["asctime"])
    assert line["levelname"] == "INFO"
    assert line["message"] == "hello world"
    assert line["process"] == os.getpid()
    assert (line["api_name"], line["job_id"]) == ("my-api", job_id)


def test_batch_id_only_inside_a_batch(collector, job_id):
    with log_context(api_name="a", job_id=job_id):
        logger.info("before")
        with log_context(batch_id="b7"):
            logger.info("inside")
        logger.info("after")
    lines = _drain(collector, job_id)
    assert [line.get("batch_id") for line in lines] == [None, "b7", None]
    assert "batch_id" not in lines[0]


def test_extra_is_flattened_one_level(collector, job_id):
    with log_context(job_id=job_id):
        logger.info("rows", extra={"rows": 3, "shape": {"w": 2, "h": 1}})
    [line] = _drain(collector, job_id)
    assert line["rows"] == 3
    assert line["shape"] == {"w": 2, "h": 1}


def test_reserved_keys_cannot_be_overridden(collector, job_id):
    spoof = {"job_id": "x", "api_name": "y", "batch_id": "z", "labels": "l", "ok": 1}
    with log_context(api_name="a", job_id=job_id):
        logger.info("extra", extra=spoof)
        logger.info(dict(spoof))  # a dict message is merged like extra
    for line in _drain(collector, job_id):
        assert (line["api_name"], line["job_id"], line["ok"]) == ("a", job_id, 1)
        assert "batch_id" not in line
        assert "labels" not in line


def test_exception_text_is_included(collector, job_id):
    with log_context(job_id=job_id):
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            logger.exception("failed")
    [line] = _drain(collector, job_id)
    assert line["levelname"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in line["exc_info"]


def test_values_json_cannot_hold_are_strings(collector, job_id):
    class Model:
        def __str__(self) -> str:
            return "<model v2>"

    circular: list = []
    circular.append(circular)
    with log_context(job_id=job_id):
        logger.info("objects", extra={"model": Model(), "ids": {3}})
        logger.info("circular", extra={"loop": circular, "ok": 1})
    first, second = _drain(collector, job_id)
    assert (first["model"], first["ids"]) == ("<model v2>", "{3}")
    assert (second["loop"], second["ok"]) == ("[[...]]", 1)


def test_format_line_drops_long_lines():
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "short", None, None)
    assert json.loads(format_line(record))["message"] == "short"
    record.msg = "x" * MAX_LINE_BYTES
    assert format_line(record) is None


# -- stderr outside jobs ---------------------------------------------------------------------


def test_outside_a_job_lines_go_to_stderr_once(capsys, collector, job_id):
    logger.info("outside")
    logger.debug("not at the default level")
    with log_context(job_id=job_id):
        logger.info("inside")
    err = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in err] == ["outside"]
    assert [line["message"] for line in _drain(collector, job_id)] == ["inside"]


def test_configure_cli_logging_writes_json_for_every_logger(capsys):
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_cli_logging("info")
        configure_cli_logging("info")  # idempotent
        logging.getLogger("dask_batchapi.test").info("driver up")
        logging.getLogger("dask_batchapi.test").debug("hidden")
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "driver up"


# -- the collector ---------------------------------------------------------------------------


def test_install_collector_is_idempotent(collector):
    assert install_collector() is collector
    assert logger.handlers.count(collector) == 1
    assert logging.getLogger().handlers.count(collector) == 1
    assert logger.level == logging.DEBUG


def test_drain_keeps_order_and_clears(collector, job_id):
    with log_context(job_id=job_id):
        for i in range(5):
            logger.info("line %d", i)
    assert [line["message"] for line in _drain(collector, job_id)] == [
        f"line {i}" for i in range(5)
    ]
    assert collector.drain(job_id) == []


def test_discard_forgets_a_job(collector, job_id):
    with log_context(job_id=job_id):
        logger.info("gone")
    collector.discard(job_id)
    assert collector.drain(job_id) == []


def test_threads_collect_into_their_own_jobs(collector):
    jobs = [f"job-{uuid.uuid4().hex}" for _ in range(2)]
    barrier = threading.Barrier(len(jobs))

    def run(job: str) -> None:
        with log_context(api_name="a", job_id=job):
            barrier.wait()
            for i in range(200):
                logger.info("%s %d", job, i)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for job in jobs:
        lines = _drain(collector, job)
        assert [line["message"] for line in lines] == [f"{job} {i}" for i in range(200)]
        assert {line["job_id"] for line in lines} == {job}


def test_log_level_of_the_context_filters(collector, job_id):
    with log_context(job_id=job_id):
        logger.debug("skipped at info")
        logger.info("kept")
        with log_context(log_level="debug"):
            logger.debug("kept at debug")
        with log_context(log_level="error"):
            logger.warning("skipped at error")
    assert [line["message"] for line in _drain(collector, job_id)] == ["kept", "kept at debug"]


def test_a_too_long_line_becomes_a_short_warning(collector, job_id):
    with log_context(api_name="a", job_id=job_id, batch_id="b1"):
        logger.info("x" * MAX_LINE_BYTES)
        logger.info("next")
    lines = collector.drain(job_id)
    assert len(lines[0]) < 1000
    warning, following = (json.loads(line) for line in lines)
    assert warning["levelname"] == "WARNING"
    assert (warning["job_id"], warning["batch_id"]) == (job_id, "b1")
    assert warning["dropped_line_bytes"] > MAX_LINE_BYTES
    assert f"{warning['dropped_line_bytes']} bytes" in warning["message"]
    assert following["message"] == "next"


def test_a_full_buffer_counts_dropped_lines(job_id):
    small = JobLogCollector(max_buffer_bytes=2000)
    user_logger = logging.getLogger(f"test.buffer.{job_id}")
    user_logger.propagate = False
    user_logger.addHandler(small)
    try:
        with log_context(api_name="a", job_id=job_id):
            for i in range(50):
                user_logger.warning("line %02d %s", i, "." * 100)
        first = [json.loads(line) for line in small.drain(job_id)]
        with log_context(job_id=job_id):
            user_logger.warning("after the drain")
        second = [json.loads(line) for line in small.drain(job_id)]
    finally:
        user_logger.removeHandler(small)
    notice, *kept = first
    assert notice["levelname"] == "WARNING"
    assert (notice["api_name"], notice["job_id"]) == ("a", job_id)
    assert notice["dropped_lines"] == 50 - len(kept) > 0
    assert notice["message"].startswith(f"{notice['dropped_lines']} log lines were dropped")
    assert [line["message"][:7] for line in kept] == [f"line {i:02d}" for i in range(len(kept))]
    assert [line["message"] for line in second] == ["after the drain"]


def test_a_user_module_logger_is_captured_once(collector, job_id):
    user_logger = logging.getLogger("userhandler")
    with log_context(job_id=job_id):
        user_logger.warning("from the handler module")
    [line] = _drain(collector, job_id)
    assert line["message"] == "from the handler module"


def test_a_propagated_batchapi_record_is_captured_once(collector, job_id, monkeypatch):
    monkeypatch.setattr(logger, "propagate", True)
    with log_context(job_id=job_id):
        logger.info("once")
        logging.getLogger("batchapi.child").info("child once")
    assert [line["message"] for line in _drain(collector, job_id)] == ["once", "child once"]


def test_cortex_logger_is_the_same_object():
    from cortex_internal.lib.log import logger as cortex_logger

    assert cortex_logger is logger


# -- capture_output --------------------------------------------------------------------------


def test_print_becomes_log_lines(collector, job_id, capsys):
    stdout = sys.stdout
    with log_context(api_name="a", job_id=job_id):
        with capture_output():
            print("processed", 8, "items")
            print("half ", end="")
            print("a line")
            print("to stderr", file=sys.stderr)
            sys.stdout.write("no newline at the end")
    lines = _drain(collector, job_id)
    assert [(line["levelname"], line["message"]) for line in lines] == [
        ("INFO", "processed 8 items"),
        ("INFO", "half a line"),
        ("ERROR", "to stderr"),
        ("INFO", "no newline at the end"),
    ]
    assert {line["job_id"] for line in lines} == {job_id}
    assert capsys.readouterr() == ("", "")
    assert sys.stdout is stdout  # put back on exit


def test_other_threads_output_is_not_captured(collector, job_id, capsys):
    capturing, printed = threading.Event(), threading.Event()

    def other_thread() -> None:
        capturing.wait()
        print("from another thread")
        printed.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with log_context(job_id=job_id), capture_output():
        capturing.set()
        printed.wait(5)
        print("from the handler")
    thread.join()
    assert [line["message"] for line in _drain(collector, job_id)] == ["from the handler"]
    assert capsys.readouterr().out == "from another thread\n"


def test_capture_without_a_job_writes_to_the_real_stderr(capsys):
    with capture_output():
        print("no job here")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["message"] == "no job here"


def test_two_threads_capture_into_their_own_jobs(collector):
    jobs = [f"job-{uuid.uuid4().hex}" for _ in range(2)]
    barrier = threading.Barrier(len(jobs))

    def run(job: str) -> None:
        with log_context(job_id=job), capture_output():
            barrier.wait()
            for i in range(100):
                print(job, i)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for job in jobs:
        assert [line["message"] for line in _drain(collector, job)] == [
            f"{job} {i}" for i in range(100)
        ]
