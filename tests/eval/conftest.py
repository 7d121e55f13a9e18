import pytest

from tests.eval.tiny_lm import build_model, build_tokenizer, write_sample


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(letter_after_space=True)


@pytest.fixture(scope="session")
def tokenizer_no_space_letters():
    return build_tokenizer(letter_after_space=False)


@pytest.fixture(scope="session")
def model(tokenizer):
    return build_model(tokenizer)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("kormedmcqa"))
