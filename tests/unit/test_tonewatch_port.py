"""res_ics_tonewatch (C, in Asterisk) is a port of ami.tones.Detector: the same corpus clips give
the same detections (signature, onset, duration, detail; level within 0.2 dB)."""

import random
import shutil

import numpy as np
import pytest

from bench.threeway import corpus, port

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this host")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return port.build(tmp_path_factory.mktemp("tonewatch") / "tonewatch")


@pytest.mark.parametrize("plan", ["na", "eu"])
@pytest.mark.parametrize("kind", corpus.ATTEMPT_KINDS)
def test_each_attempt_is_detected_alike(binary, kind, plan):
    x = corpus.attempt(kind, random.Random(f"{kind}{plan}"), plan)[0]
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    py, c = port.python_side(pcm, plan), port.c_side(binary, pcm, plan)
    assert py and port.same(py, c), (py, c)


@pytest.mark.parametrize("kind", corpus.BENIGN_KINDS)
def test_benign_calls_are_detected_alike(binary, kind):
    x = corpus.benign(kind, random.Random(kind), 30)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    assert port.same(port.python_side(pcm, "na"), port.c_side(binary, pcm, "na"))
