"""Training objectives: each cuts a model's batches from its inputs and gives the loss of a batch
(next item over the catalogue, two-tower sampled softmax + SSL masking, CTR cross-entropy,
listwise softmax, Recformer fine-tuning and pre-training), and `hooks`: the interface of code
that runs inside the training loop (`recsys.train.loop`), here so that a recipe can hand its
task's hooks to the loop. May use `inputs`, `models`, `data`, `losses`, never `eval`."""
