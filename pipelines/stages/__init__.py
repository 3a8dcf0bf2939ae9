"""The DVC stages (``dvc.yaml``): ``prepare``, ``train``, ``evaluate``. Each is a thin ``main()``
that reads its sections of ``params.yaml``, does one job and writes its outputs atomically."""
