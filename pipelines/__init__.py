"""DVC stage entry points (``python -m pipelines.<stage>``): prepare, train, evaluate.

They read ``params.yaml``, call ``lincore`` and log to MLflow; the stages land with the pipeline
work. Until then ``dvc.yaml`` runs the ``lincore`` demo.
"""
