"""The worker side in process on the tiny real model: training, evaluation, the child, the reconciler."""
