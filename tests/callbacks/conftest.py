import pytest

from tests.eval.tiny_lm import build_tokenizer, write_sample


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(letter_after_space=True)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("kormedmcqa"), sizes={"doctor": 5, "nurse": 4, "pharm": 3, "dentist": 3})
