"""`model.lora_layers`: LoRA on the top N layers only, and backward stops at the lowest adapted one."""
from __future__ import annotations

import pytest
import torch

from sbs.config import ConfigError
from sbs.student.config import ModelConfig
from sbs.student.models import build_trainable


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gpt2"])
def test_only_the_top_layers_train_and_the_bottom_runs_without_a_graph(name):
    model, tok, _ = build_trainable(ModelConfig(name=name, lora_r=4, lora_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all((".layers.1." in n or ".h.1." in n) and "lora_" in n for n in trained), trained
    ids = torch.tensor([tok.encode("a short input")])
    out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states  # embeddings, after layer 0, after layer 1
    assert not hidden[1].requires_grad, "layer 0 output needs no graph: nothing below the top layer trains"
    out.logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trained)


def test_too_many_layers_names_the_field():
    with pytest.raises(ConfigError, match="model.lora_layers"):
        build_trainable(ModelConfig(name="tiny-gemma3", lora_r=4, lora_layers=3))
