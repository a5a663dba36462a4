"""The shipped teachers must still reach the quality the course promises, on held-out data."""

import pytest

from lightweight.data import char_corpus, load_digits
from lightweight.measure import accuracy
from lightweight.teachers import load_teacher, teacher_path
from lightweight.train import evaluate_lm, predict


def test_digits_teacher_reaches_97_percent_on_test():
    d = load_digits()
    assert accuracy(predict(load_teacher("digits-cnn"), d.x_test), d.y_test) >= 97.0


def test_tinygpt_teacher_reaches_1_75_nats_on_validation():
    assert evaluate_lm(load_teacher("tinygpt"), char_corpus()) <= 1.75


@pytest.mark.parametrize("name", ["digits-cnn", "tinygpt"])
def test_teachers_are_safetensors_not_pickle(name):
    head = teacher_path(name).read_bytes()[:16]
    assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # pickle / torch zip
    n = int.from_bytes(head[:8], "little")  # safetensors: u64 header length, then JSON
    assert teacher_path(name).read_bytes()[8:8 + n].startswith(b"{")


def test_unknown_teacher():
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("resnet")
