"""Contextual calibration of label words (data.label_calibration: content_free)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dpfedlora.calibration import CONTENT_FREE, calibration_inputs, label_log_prior
from dpfedlora.config import ConfigError, DataConfig, ModelConfig
from dpfedlora.data.tensors import TensorData
from dpfedlora.tasks import TASKS
from tests.models.test_prompts import _tokenizer

TEMPLATE = "is this spam or ham ?\nsms : {text}"


def _configs(calibration: str = "content_free"):
    data = DataConfig(
        label_names=("ham", "spam"), prompt_template=TEMPLATE,
        label_calibration=calibration,
    )  # fmt: skip
    return data, ModelConfig(name="x", task="causal_lm", max_length=40)


@pytest.mark.parametrize("chat", [True, False])
def test_content_free_inputs_are_the_prompt_with_fixed_strings(chat):
    tok = _tokenizer(chat)
    data, model = _configs()
    inputs = calibration_inputs(tok, data, model)
    assert len(inputs) == len(CONTENT_FREE)
    ham = tok(" ham", add_special_tokens=False)["input_ids"][0]
    for i in range(len(inputs)):
        first = int((inputs.labels[i] != -100).int().argmax())
        assert int(inputs.input_ids[i, first]) == ham  # the answer starts right after the prompt
        prompt = tok.decode(inputs.input_ids[i, :first])
        assert "is this spam or ham" in prompt  # the same prompt the examples get
    assert calibration_inputs(tok, _configs("none")[0], model) is None


class _FixedLogits(nn.Module):
    """Returns the same logits at every position: row i of ``table`` for input i."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        n, t = input_ids.shape
        return SimpleNamespace(logits=self.table[:n, None, :].expand(n, t, -1))


def test_prior_is_the_mean_renormalised_label_probability():
    # vocabulary of 4; label words are tokens 1 and 3
    table = torch.tensor([[0.0, math.log(3.0), 5.0, 0.0],  # p(1), p(3) ∝ 3, 1 -> 0.75, 0.25
                          [0.0, 0.0, 5.0, 0.0]])  # fmt: skip  # 0.5, 0.5
    inputs = TensorData(
        torch.zeros((2, 4), dtype=torch.long), torch.ones((2, 4), dtype=torch.long),
        torch.tensor([[-100, -100, 1, 1], [-100, -100, 1, 1]]),
    )  # fmt: skip
    prior = label_log_prior(_FixedLogits(table), inputs, [1, 3])
    torch.testing.assert_close(prior.exp(), torch.tensor([0.625, 0.375]))


def test_calibration_moves_the_decision_by_the_prior():
    ids = [1, 3]
    batch = TensorData(
        torch.zeros((2, 3), dtype=torch.long), torch.ones((2, 3), dtype=torch.long),
        torch.tensor([[-100, 1, 1], [-100, 1, 1]]),
    )  # fmt: skip
    # both examples favour label 0, the second less so
    logits = torch.zeros((2, 3, 4))
    logits[0, 0, 1], logits[1, 0, 1] = 4.0, 1.0
    predict = TASKS["causal_lm"].predict
    assert predict(logits, batch, ids).tolist() == [0, 0]
    # a prior of 0.9 / 0.1: example 2's odds e^1 < 0.9/0.1 flip to label 1; example 1's e^4 do not
    prior = torch.tensor([0.9, 0.1]).log()
    assert predict(logits, batch, ids, log_prior=prior).tolist() == [0, 1]


def test_bad_calibration_is_a_config_error():
    with pytest.raises(ConfigError, match="data.label_calibration"):
        DataConfig(label_calibration="contextual")
