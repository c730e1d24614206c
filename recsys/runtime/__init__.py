"""What every layer above may lean on: atomic file and dir writes, checkpoints (safetensors +
JSON), MLflow tracking, torch.distributed process groups, the allocator setting, plots and
summary tables. Imports only `config` and the leaves below it."""
