"""Ray Train glue: the TorchTrainer for a run (trainer.py) and the loop each worker runs
(loop.py). The training step itself is components/training/engine.py."""
