"""A real TensorBoard server (loopback only) serves back what lrwatch logs and what lrwatch reads.

One run is written with PyTorch's ``SummaryWriter`` (what Lightning's ``TensorBoardLogger`` uses): the contract
tags, the custom-scalars layout from ``write_layout`` and the ``diagnoses_markdown`` text. The server's HTTP data
API must return, tag by tag, exactly the steps and values ``lrwatch.tensorboard.read_runs`` reads; its
custom-scalars plugin must find the lrwatch category and match each chart's regexes to the intended tags; its
text plugin must render the diagnoses table.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from lrwatch import tags
from lrwatch.diagnosis import Diagnosis, Report
from lrwatch.signature import Signature
from lrwatch.tensorboard import custom_scalars_layout, diagnoses_markdown, read_runs, write_layout

RUN = "run_a"
N_STEPS = 60
STARTUP_SECONDS = 30.0
POLL_SECONDS = 0.25


def _series() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What LRWatch logs for one SGD run with two ×0.1 drops, plus a diagnosis flag and an action."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, N_STEPS + 1)
    lr = 0.1 * 0.1 ** ((steps - 1) // 20)
    grad_norm = np.exp(rng.normal(0.0, 0.1, N_STEPS))
    flag = ((steps >= 10) & (steps <= 20)).astype(float)
    return {
        tags.DISPLACEMENT: (steps, lr * grad_norm),
        tags.GRAD_NORM: (steps, grad_norm),
        tags.DESCENT: (steps, lr * grad_norm**2),
        tags.LOSS: (steps, 1.0 / np.sqrt(steps)),
        tags.lr_tag("SGD"): (steps, lr),
        tags.diagnosis_tag("lr_too_high"): (steps, flag),
        tags.action_tag("drop"): (np.array([21]), np.array([0.01])),
    }


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    series = _series()
    report = Report(Signature("step", [21, 41], [0.1, 0.1], None, [(1, 20), (21, 40), (41, 60)], "lr"),
                    [Diagnosis("lr_too_high", 10, 20, "Drop the lr now.", {"ratio": 3.0})], N_STEPS)
    with SummaryWriter(str(root / RUN)) as writer:
        write_layout(writer, custom_scalars_layout([tags.lr_tag("SGD")]))
        for tag, (tag_steps, values) in series.items():
            for step, value in zip(tag_steps.tolist(), values.tolist()):
                writer.add_scalar(tag, value, step)
        writer.add_text(tags.DIAGNOSES_TEXT, diagnoses_markdown(report), N_STEPS)
    return root, report


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(base: str, path: str, **query) -> object:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(logdir, tmp_path_factory):
    """Base URL of a TensorBoard on 127.0.0.1 that has loaded every lrwatch tag of the run."""
    root, _ = logdir
    port = _free_loopback_port()
    log = (tmp_path_factory.mktemp("tb-server") / "tensorboard.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.skip(f"tensorboard exited with {process.returncode} before serving: {log.read()[-500:]}")
            try:
                if set(_series()) <= set(_get(base, "/data/plugin/scalars/tags").get(RUN, {})):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.skip(f"tensorboard did not serve the run within {STARTUP_SECONDS:.0f} s: {log.read()[-500:]}")
            time.sleep(POLL_SECONDS)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_server_values_equal_what_lrwatch_reads_and_what_was_logged(logdir, server):
    root, _ = logdir
    read = read_runs(root)[RUN].scalars
    for tag, (steps, values) in _series().items():
        served = _get(server, "/data/plugin/scalars/scalars", run=RUN, tag=tag)
        served_steps = [step for _, step, _ in served]
        served_values = [value for _, _, value in served]
        np.testing.assert_array_equal(served_steps, steps, err_msg=tag)
        np.testing.assert_array_equal(served_values, values.astype(np.float32), err_msg=tag)  # float32 on disk
        np.testing.assert_array_equal(read[tag].steps, served_steps, err_msg=tag)
        np.testing.assert_array_equal(read[tag].values, served_values, err_msg=tag)


def test_server_finds_the_layout_and_its_regexes_select_the_lrwatch_tags(server):
    layout = _get(server, "/data/plugin/custom_scalars/layout")
    (category,) = layout["category"]
    charts = {chart["title"]: chart["multiline"]["tag"] for chart in category["chart"]}
    assert category["title"] == "lrwatch"
    expected = {
        "lr and displacement": {tags.lr_tag("SGD"), tags.DISPLACEMENT},
        "grad norm": {tags.GRAD_NORM},
        "descent": {tags.DESCENT},
        "loss": {tags.LOSS},
        "diagnoses": {tags.diagnosis_tag("lr_too_high")},
        "actions": {tags.action_tag("drop")},
    }
    assert set(charts) == set(expected)
    for title, regexes in charts.items():
        matched = set()
        for regex in regexes:
            answer = _get(server, "/data/plugin/custom_scalars/scalars", run=RUN, tag=regex)
            assert answer["regex_valid"], regex
            matched |= set(answer["tag_to_events"])
        assert matched == expected[title], title


def test_server_renders_the_diagnoses_text(logdir, server):
    _, report = logdir
    # PyTorch's SummaryWriter.add_text stores text under "<tag>/text_summary".
    (text_tag,) = _get(server, "/data/plugin/text/tags")[RUN]
    assert text_tag == f"{tags.DIAGNOSES_TEXT}/text_summary"
    (entry,) = _get(server, "/data/plugin/text/text", run=RUN, tag=text_tag)
    assert entry["step"] == N_STEPS
    assert "step (read from lr); drops at step 21 (×0.1), step 41 (×0.1)" in entry["text"]
    assert "<table>" in entry["text"]
    assert re.search(r"<td>lr_too_high</td>\s*<td>10–20</td>\s*<td>Drop the lr now.</td>", entry["text"])
