"""The model folder's tokenizer read without transformers gives transformers' answers: the same
ids, special ids, chat template text, and so the same requests for the same seed."""

import pytest

from gpushare.config import ApiConfig
from gpushare.errors import ConfigError
from gpushare.load.folder_tokenizer import FolderTokenizer
from gpushare.load.tokens import chat_template_tokens
from gpushare.load.workload import RequestSource, load_tokenizer, random_streams
from gpushare.load.workloads.sharegpt import ShareGPTWorkload
from gpushare.load.workloads.synthetic import SyntheticWorkload
from gpushare.serving.models import embedded_folder


@pytest.fixture(scope="module")
def both():
    from transformers import AutoTokenizer

    folder = embedded_folder("smollm2")
    return load_tokenizer(str(folder)), AutoTokenizer.from_pretrained(str(folder))


def test_the_folder_is_read_without_transformers(both):
    ours, _ = both
    assert isinstance(ours, FolderTokenizer)


def test_ids_special_ids_and_the_chat_template_are_transformers(both):
    ours, theirs = both
    assert ours.vocab_size == theirs.vocab_size and ours.all_special_ids == theirs.all_special_ids
    for text in ("hello world", "  spaces\tand\nlines ", "émoji 🙂 and 数字 123", "<|im_start|>user"):
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
        assert ours.encode(text) == theirs.encode(text)
    ids = [[5, 900, 17, 48000], [1, 2, 0, 300]]
    assert ours.batch_decode(ids) == theirs.batch_decode(ids)
    for messages in ([{"role": "user", "content": "hi"}],
                     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]):
        for generation in (True, False):
            assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation) == \
                theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    assert chat_template_tokens(ours) == chat_template_tokens(theirs) > 0


@pytest.mark.parametrize("workload, endpoint", [
    (SyntheticWorkload(input_tokens={"dist": "uniform", "low": 10, "high": 300}, output_tokens=8), "completions"),
    (SyntheticWorkload(input_tokens=64, output_tokens=8), "chat"),
    (ShareGPTWorkload(kind="sharegpt", max_model_len=1024, max_output_tokens=64), "completions"),
])
def test_the_same_seed_gives_the_same_requests(both, workload, endpoint):
    ours, theirs = both
    api = ApiConfig(endpoint=endpoint)
    mine, reference = (RequestSource(workload, api, t, random_streams(7)[0]) for t in (ours, theirs))
    assert [mine[i] for i in range(40)] == [reference[i] for i in range(40)]


def test_a_broken_tokenizer_file_is_one_config_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"^tokenizer: cannot load '.*': "):
        load_tokenizer(str(tmp_path))
