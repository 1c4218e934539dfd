"""Models and inputs: ``models`` (loading SD + ControlNet), ``builtin`` (the toy and tiny models),
``speed`` (speed and memory options), ``adapters`` (LoRA, embeddings), ``controls`` (extra
ControlNets), ``inputs`` (a run's poses and frames at the working size), ``sources`` (what
techniques read from the source clip), ``flow`` (optical flow)."""
