"""What the stages, commands and sweeps share: configuration, paths, atomic I/O, errors, data,
checkpoints, figures, the Ray runtime and MLflow tracking."""
