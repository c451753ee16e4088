"""Causal-LM prompts: the chat template is applied, long examples lose prompt text but never
their answer, and label words must start with distinct tokens. An offline word-level tokenizer
with a ChatML template stands in for an instruct model's."""

from __future__ import annotations

import pytest

from dpfedlora.config import ConfigError, DataConfig, ModelConfig
from dpfedlora.prompts import Encoder
from dpfedlora.tasks import TASKS

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = "is this spam or ham ? sms : hello win a prize now call me later".split()


def _tokenizer(chat: bool):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    extra = ["user", "assistant", "\n", "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + extra)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), "isolated"),  # a newline is a token
            pre_tokenizers.Split(Regex(" "), "removed"),  # words split on spaces
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    if chat:
        fast.chat_template = CHATML
    return fast


def _rows(n_words: int):
    text = " ".join(["hello"] * n_words)
    return {"text": [text, "win a prize now"], "label": ["ham", "spam"],
            "response": [" ham", " spam"]}  # fmt: skip


def _encode(tok, rows, **model_kw):
    data = DataConfig(
        label_names=("ham", "spam"),
        prompt_template="is this spam or ham ?\nsms : {text}",
    )  # fmt: skip
    model = ModelConfig(name="x", task="causal_lm", **model_kw)
    return TASKS["causal_lm"].tokenize(rows, data, model, tok), data, model


@pytest.mark.parametrize("chat", [True, False])
def test_long_examples_keep_their_whole_answer(chat):
    tok = _tokenizer(chat)
    out, data, model = _encode(tok, _rows(200), max_length=40)
    for i, answer in enumerate(["ham", "spam"]):
        want = tok(answer if chat else f" {answer}", add_special_tokens=False)["input_ids"]
        want = want + [tok.eos_token_id]
        got = out.labels[i][out.labels[i] != -100].tolist()
        assert got == want  # every answer token is trained on, none cut
    assert int(out.attention_mask[0].sum()) == 40  # the long one filled the length
    # the instruction survived: the text lost its end, not the template
    question = tok("is this spam or ham ?", add_special_tokens=False)["input_ids"]
    row = out.input_ids[0].tolist()
    assert any(row[i : i + len(question)] == question for i in range(len(row)))


def test_chat_template_is_applied():
    tok = _tokenizer(chat=True)
    out, _, _ = _encode(tok, _rows(3), max_length=64)
    n = int(out.attention_mask[1].sum())
    prompt = "is this spam or ham ?\nsms : win a prize now"
    expected = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(expected + "spam", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out.input_ids[1, :n].tolist() == ids
    plain, _, _ = _encode(tok, _rows(3), max_length=64, prompt_format="plain")
    assert tok.convert_tokens_to_ids("<|im_start|>") not in plain.input_ids[1].tolist()


def test_too_short_a_length_is_a_config_error():
    with pytest.raises(ConfigError, match="model.max_length"):
        _encode(_tokenizer(chat=True), _rows(3), max_length=12)


def test_label_words_must_start_with_distinct_tokens():
    tok = _tokenizer(chat=True)
    data = DataConfig(label_names=("ham", "ham"))
    model = ModelConfig(name="x", task="causal_lm")
    with pytest.raises(ConfigError, match="same token"):
        Encoder(tok, data, model).label_token_ids(data.label_names)
    ids = Encoder(tok, DataConfig(), model).label_token_ids(("ham", "spam"))
    assert ids == [tok.convert_tokens_to_ids("ham"), tok.convert_tokens_to_ids("spam")]


def test_chat_format_without_a_template_is_refused():
    with pytest.raises(ConfigError, match="no chat template"):
        _encode(_tokenizer(chat=False), _rows(3), max_length=64, prompt_format="chat")


def test_prompt_template_needs_one_text_slot():
    with pytest.raises(ConfigError, match="data.prompt_template"):
        DataConfig(prompt_template="no slot here")
