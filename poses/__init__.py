"""Poses below ``pose_extract.py``: ``pose_files`` (OpenPose JSON in and out), ``detectors`` (the
extract backends: OpenPose, DWPose, MediaPipe), ``pose_tracking`` (one person followed through a clip,
gaps filled)."""
