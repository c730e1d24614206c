"""Training tasks are nn.Modules holding their model: `task(batch)` is the loss, so a wrapper that
works through `forward` (DDP, a sparsity mask) wraps the whole objective."""

import torch
from torch import nn

from recsys.recipes import load_data, new_model, training_task


def test_a_task_is_a_module_whose_forward_is_the_loss_of_its_model(config):
    dataset, split = load_data(config)
    torch.manual_seed(0)
    model = new_model(config, dataset, split)
    task = training_task(config, dataset, split, model)
    assert isinstance(task, nn.Module) and task.model is model
    assert {id(p) for p in model.parameters()} <= {id(p) for p in task.parameters()}
    loss = task(next(iter(task.batches())))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    task.eval()
    assert not model.training  # train / eval mode reaches the model through the task
