"""Training objectives: each cuts a model's batches from its inputs and gives the loss of a batch
(next item over the catalogue, two-tower sampled softmax + SSL masking, CTR cross-entropy,
listwise softmax). May use `inputs`, `models`, `data`, `losses`, never `eval`."""
