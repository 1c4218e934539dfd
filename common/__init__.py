"""What every part shares: ``errors`` (UserError, the one-line failure), ``files`` (atomic writes,
file hashes, output paths checked before any work), ``video_io`` (videos and PNGs in and out, PyAV).

Imports nothing of ours but itself: the lowest layer."""
