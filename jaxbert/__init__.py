"""jaxbert: BERT multitask fine-tuning in JAX/Flax."""
