"""Evaluation sorts by length for speed; the metrics must be those of the data in its order."""

import torch

from dpfedlora.evaluate import evaluate
from dpfedlora.metrics import classification_metrics
from tests.helpers import tiny_setup


def test_length_sorted_evaluation_matches_a_plain_forward(tmp_path):
    fed = tiny_setup("method.name=fedit")
    data = fed.eval_data.subset(torch.arange(50))
    lengths = data.attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 5  # the sort really reorders
    model = fed.model
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    model.train()
    want = classification_metrics(logits.argmax(-1).numpy(), data.labels.numpy(), 2)
    want["loss"] = float(torch.nn.functional.cross_entropy(logits, data.labels))
    got = evaluate(model, data, task="classification", num_labels=2, batch_size=7)
    for k, v in want.items():
        assert abs(got[k] - v) < 1e-5, k
    assert model.training
