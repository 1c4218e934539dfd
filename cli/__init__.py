"""The command line and the Python API, one vocabulary: ``run_args`` (the run command's flags and
presets), ``run`` (its checks and its run), ``api`` (``generate``/``load``), ``outputs`` (the run folder)."""
