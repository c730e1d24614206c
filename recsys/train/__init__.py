"""The one training loop, `loop.fit(config)`: every model trains through it, validated every few
epochs, stopped early, checkpointed after each epoch and resumable. Reaches models only through
`recipes`; never imported by `export`."""
